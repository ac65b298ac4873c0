"""Sample Meta webhook bodies, shaped after Meta's WhatsApp Cloud API webhook reference.

`sample(kind)` returns a fresh body each call: new wamids and template ids, current
timestamps, so posting it makes new events rather than duplicates. `flask --app app
simulate KIND` posts them; tests and benchmarks build on them; `status_sample(n)` makes
one body carrying n statuses.

Account-level updates (account_update, ...) carry nothing unique but the entry's `time`,
so their `time` advances by at least a second per call and never repeats.
"""

from __future__ import annotations

import base64
import copy
import itertools
import secrets
import time
from collections.abc import Callable
from typing import Any

# Meta's documentation examples use these numbers; any real install has its own.
WABA_ID = "102290129340398"
PHONE_NUMBER_ID = "106540352242922"
DISPLAY_PHONE_NUMBER = "15550783881"
CUSTOMER = "16505551234"
CUSTOMER_NAME = "Sheena Nelson"
OTHER_CUSTOMER = "447700900123"
OTHER_NAME = "Tom Okafor"
# A customer who adopted a WhatsApp username: Meta names them by business-scoped user ids
# (a country code, a dot, then digits; a parent id shared across portfolios has ENT in it).
USERNAME_CUSTOMER_ID = "US.13491208655302741918"
USERNAME_PARENT_ID = "US.ENT.11815799212886844830"
USERNAME = "sheena.grows"

_last_time = 0


def _entry_time() -> int:
    """Now, but strictly later than the last call, so content-keyed updates never collide."""
    global _last_time
    _last_time = max(int(time.time()), _last_time + 1)
    return _last_time


def wamid() -> str:
    return "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQ" + base64.b32encode(secrets.token_bytes(10)).decode() + "AA=="


def media_id() -> str:
    return str(10**15 + secrets.randbelow(9 * 10**15))


def now() -> str:
    return str(int(time.time()))


def envelope(changes: list[dict], with_time: bool = False) -> dict:
    entry: dict[str, Any] = {"id": WABA_ID, "changes": changes}
    if with_time:
        entry["time"] = _entry_time()
    return {"object": "whatsapp_business_account", "entry": [entry]}


def change(field: str, value: dict) -> dict:
    return {"value": value, "field": field}


def metadata() -> dict:
    return {"display_phone_number": DISPLAY_PHONE_NUMBER, "phone_number_id": PHONE_NUMBER_ID}


def contact(wa_id: str = CUSTOMER, name: str = CUSTOMER_NAME) -> dict:
    return {"profile": {"name": name}, "wa_id": wa_id}


def message(mtype: str, payload: Any = None, sender: str = CUSTOMER, **extra: Any) -> dict:
    """One incoming message of `mtype`; `payload` goes under the key named after the type."""
    msg = {"from": sender, "id": wamid(), "timestamp": now(), "type": mtype}
    if payload is not None:
        msg[mtype] = payload
    msg.update(extra)
    return msg


def messages_change(*messages: dict, contacts: list[dict] | None = None) -> dict:
    value = {"messaging_product": "whatsapp", "metadata": metadata()}
    value["contacts"] = contacts if contacts is not None else [contact()]
    value["messages"] = list(messages)
    return change("messages", value)


def incoming(*messages: dict, contacts: list[dict] | None = None) -> dict:
    return envelope([messages_change(*messages, contacts=contacts)])


def reply_context() -> dict:
    """What Meta adds when the customer answers one of our messages."""
    return {"from": DISPLAY_PHONE_NUMBER, "id": wamid()}


def media(mime_type: str, **extra: Any) -> dict:
    return {"mime_type": mime_type, "sha256": secrets.token_hex(32), "id": media_id(), **extra}


def status(state: str, recipient: str = CUSTOMER, wamid_: str | None = None, **extra: Any) -> dict:
    found = {"id": wamid_ or wamid(), "status": state, "timestamp": now(), "recipient_id": recipient}
    if state in ("sent", "delivered"):
        found["conversation"] = {"id": secrets.token_hex(16), "origin": {"type": "utility"}}
        if state == "sent":
            found["conversation"]["expiration_timestamp"] = str(int(time.time()) + 86400)
        found["pricing"] = {"billable": True, "pricing_model": "PMP", "category": "utility", "type": "regular"}
    found.update(extra)
    return found


def statuses_change(statuses: list[dict]) -> dict:
    return change("messages", {"messaging_product": "whatsapp", "metadata": metadata(), "statuses": statuses})


def status_sample(n: int, states: tuple[str, ...] = ("sent", "delivered", "read")) -> dict:
    """One body carrying n statuses (new wamids, cycling through `states`), for benchmarks."""
    cycle = itertools.cycle(states)
    return envelope([statuses_change([status(next(cycle)) for _ in range(n)])])


def failed_status() -> dict:
    error = {
        "code": 131049,
        "title": "This message was not delivered to maintain healthy ecosystem engagement.",
        "message": "This message was not delivered to maintain healthy ecosystem engagement.",
        "error_data": {"details": "In order to maintain a healthy ecosystem engagement, the message failed."},
        "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
    }
    return envelope([statuses_change([status("failed", errors=[error])])])


def template_value(**extra: Any) -> dict:
    template_id = 10**15 + secrets.randbelow(9 * 10**15)  # Meta sends template ids as numbers
    return {"message_template_id": template_id, "message_template_name": "order_confirmation", **extra}


def interactive(kind: str, reply: dict) -> dict:
    return message("interactive", {"type": kind, kind: reply}, context=reply_context())


def order() -> dict:
    items = [
        {"product_retailer_id": "sku-mug-01", "quantity": 2, "item_price": 12.5, "currency": "USD"},
        {"product_retailer_id": "sku-tee-07", "quantity": 1, "item_price": 20, "currency": "USD"},
    ]
    return message("order", {"catalog_id": "194836987003835", "text": "Gift wrap please", "product_items": items})


def shared_contacts() -> dict:
    card = {
        "name": {"formatted_name": "Ana Lima", "first_name": "Ana", "last_name": "Lima"},
        "phones": [{"phone": "+55 11 91234 5678", "wa_id": "5511912345678", "type": "CELL"}],
        "emails": [{"email": "ana@example.com", "type": "WORK"}],
        "org": {"company": "Lucky Shrub"},
    }
    return message("contacts", contacts=[card])


def system_message() -> dict:
    body = f"User {CUSTOMER_NAME} changed from {CUSTOMER} to 16505559876"
    return message("system", {"body": body, "wa_id": "16505559876", "type": "user_changed_number"})


def unsupported() -> dict:
    error = {
        "code": 131051,
        "title": "Message type unknown",
        "message": "Message type unknown",
        "error_data": {"details": "Message type is currently not supported."},
    }
    return message("unsupported", None, errors=[error])


def edit() -> dict:
    new_version = {"context": {"id": wamid()}, "type": "text", "text": {"body": "Actually, make it two mugs"}}
    return message("edit", {"original_message_id": wamid(), "message": new_version})


def referral() -> dict:
    ad = {
        "source_url": "https://fb.me/3cr4Wqqkv",
        "source_id": "120226305854810726",
        "source_type": "ad",
        "headline": "Spring plants sale",
        "body": "Chat with us to order",
        "media_type": "image",
        "image_url": "https://scontent.example.net/ad.jpg",
        "ctwa_clid": "Afc3nYt4TTydumlFFsatFz8jr9z9SmsxWoUwJ9qfvYx1IhMlOJ" + secrets.token_hex(4),
    }
    return incoming(message("text", {"body": "Can I get more info about this?"}, referral=ad))


def username_contact(with_phone: bool) -> dict:
    """A contacts[] entry of a customer with a username; wa_id only while Meta still shares the phone."""
    found: dict[str, Any] = {"profile": {"name": CUSTOMER_NAME, "username": USERNAME}}
    if with_phone:
        found["wa_id"] = CUSTOMER
    found.update(user_id=USERNAME_CUSTOMER_ID, parent_user_id=USERNAME_PARENT_ID)
    return found


def username_message(with_phone: bool) -> dict:
    """A text from a customer with a username; with the phone hidden there is no `from` at all."""
    msg = message("text", {"body": "Hi, it's me on my new username"})
    if not with_phone:
        del msg["from"]
    msg.update(from_user_id=USERNAME_CUSTOMER_ID, from_parent_user_id=USERNAME_PARENT_ID)
    return incoming(msg, contacts=[username_contact(with_phone)])


def username_status() -> dict:
    """`read` for a message to a customer whose phone is hidden: recipient ids only."""
    found = status("read", recipient_user_id=USERNAME_CUSTOMER_ID, recipient_parent_user_id=USERNAME_PARENT_ID)
    del found["recipient_id"]
    return envelope([statuses_change([found])])


def echo() -> dict:
    sent = {"from": DISPLAY_PHONE_NUMBER, "to": CUSTOMER, "id": wamid(), "timestamp": now(), "type": "text"}
    sent["text"] = {"body": "Here's the info you requested! https://www.meta.com/quest/quest-3/"}
    value = {"messaging_product": "whatsapp", "metadata": metadata(), "message_echoes": [sent]}
    return envelope([change("smb_message_echoes", value)])


def user_preferences() -> dict:
    pref = {"wa_id": CUSTOMER, "detail": "User requested to stop marketing messages"}
    pref.update({"category": "marketing_messages", "value": "stop", "timestamp": int(time.time())})
    value = {"messaging_product": "whatsapp", "metadata": metadata(), "contacts": [{"wa_id": CUSTOMER}]}
    value["user_preferences"] = [pref]
    return envelope([change("user_preferences", value)], with_time=True)


def calls() -> dict:
    call = {"id": "wacid." + secrets.token_hex(16), "to": DISPLAY_PHONE_NUMBER, "from": CUSTOMER}
    call.update({"event": "connect", "timestamp": now(), "direction": "USER_INITIATED"})
    call["session"] = {"sdp_type": "offer", "sdp": "v=0\r\no=- 7669997803033704573 2 IN IP4 127.0.0.1\r\n"}
    value = {"messaging_product": "whatsapp", "metadata": metadata(), "contacts": [contact()], "calls": [call]}
    return envelope([change("calls", value)], with_time=True)


def account(field: str, value: dict) -> Callable[[], dict]:
    """A builder for an account-level update; each body gets its own copy of `value`."""
    return lambda: envelope([change(field, copy.deepcopy(value))], with_time=True)


def batch() -> dict:
    """Two entries: messages from two customers and several statuses, plus a template update."""
    messages = messages_change(
        message("text", {"body": "Is the fern in stock?"}),
        message("image", media("image/jpeg", caption="This one"), sender=OTHER_CUSTOMER),
        message("reaction", {"message_id": wamid(), "emoji": "\U0001f44d"}),
        contacts=[contact(), contact(OTHER_CUSTOMER, OTHER_NAME)],
    )
    sent = wamid()
    statuses = statuses_change([status("sent", wamid_=sent), status("delivered", wamid_=sent), status("read")])
    template = change("message_template_status_update", template_value(event="APPROVED", reason="NONE"))
    body = envelope([messages, statuses])
    body["entry"].append({"id": "102290129340399", "time": _entry_time(), "changes": [template]})
    return body


KIND_BUILDERS: dict[str, Callable[[], dict]] = {
    "text": lambda: incoming(message("text", {"body": "Does it come in another color?"})),
    "image": lambda: incoming(message("image", media("image/jpeg", caption="Like this, but in blue"))),
    "video": lambda: incoming(message("video", media("video/mp4", caption="Unboxing"))),
    "audio": lambda: incoming(message("audio", media("audio/mpeg", voice=False))),
    "voice": lambda: incoming(message("audio", media("audio/ogg; codecs=opus", voice=True))),
    "document": lambda: incoming(message("document", media("application/pdf", filename="invoice-0042.pdf"))),
    "sticker": lambda: incoming(message("sticker", media("image/webp", animated=False))),
    "location": lambda: incoming(
        message(
            "location",
            {"latitude": 37.483872, "longitude": -122.148358, "name": "Lucky Shrub", "address": "1 Hacker Way"},
        )
    ),
    "contacts": lambda: incoming(shared_contacts()),
    "button": lambda: incoming(
        message("button", {"payload": "STOP_PROMOS", "text": "Stop promotions"}, context=reply_context())
    ),
    "interactive_button": lambda: incoming(interactive("button_reply", {"id": "confirm-yes", "title": "Yes, confirm"})),
    "interactive_list": lambda: incoming(
        interactive("list_reply", {"id": "slot-3", "title": "Tuesday 10:00", "description": "Store pickup"})
    ),
    "interactive_flow": lambda: incoming(
        interactive(
            "nfm_reply",
            {"name": "flow", "body": "Sent", "response_json": '{"flow_token": "T0K3N", "size": "M", "qty": "2"}'},
        )
    ),
    "reaction": lambda: incoming(message("reaction", {"message_id": wamid(), "emoji": "\u2764\ufe0f"})),
    "order": lambda: incoming(order()),
    "system": lambda: incoming(system_message()),
    "unsupported": lambda: incoming(unsupported()),
    "request_welcome": lambda: incoming(message("request_welcome")),
    "edit": lambda: incoming(edit()),
    "revoke": lambda: incoming(message("revoke", {"original_message_id": wamid()})),
    "referral": referral,
    "username": lambda: username_message(with_phone=True),
    "username_no_phone": lambda: username_message(with_phone=False),
    "status_username": username_status,
    "status": lambda: envelope([statuses_change([status("sent"), status("delivered"), status("read")])]),
    "status_failed": failed_status,
    "echo": echo,
    "template": lambda: envelope(
        [change("message_template_status_update", template_value(event="APPROVED", reason="NONE"))],
        with_time=True,
    ),
    "template_quality": lambda: envelope(
        [
            change(
                "message_template_quality_update",
                template_value(
                    previous_quality_score="GREEN", new_quality_score="YELLOW", message_template_language="en_US"
                ),
            )
        ],
        with_time=True,
    ),
    "template_category": lambda: envelope(
        [
            change(
                "template_category_update",
                template_value(
                    previous_category="UTILITY", new_category="MARKETING", message_template_language="en_US"
                ),
            )
        ],
        with_time=True,
    ),
    "account_update": account(
        "account_update", {"event": "ACCOUNT_VIOLATION", "violation_info": {"violation_type": "SCAM"}}
    ),
    "account_review": account("account_review_update", {"decision": "APPROVED"}),
    "business_capability": account(
        "business_capability_update",
        {"max_daily_conversations_per_business": "TIER_10K", "max_phone_numbers_per_waba": 25},
    ),
    "phone_number_name": account(
        "phone_number_name_update",
        {
            "display_phone_number": DISPLAY_PHONE_NUMBER,
            "decision": "APPROVED",
            "requested_verified_name": "Lucky Shrub",
        },
    ),
    "phone_number_quality": account(
        "phone_number_quality_update",
        {"display_phone_number": DISPLAY_PHONE_NUMBER, "event": "FLAGGED", "current_limit": "TIER_10K"},
    ),
    "account_alerts": account(
        "account_alerts",
        {
            "entity_type": "PHONE_NUMBER",
            "entity_id": PHONE_NUMBER_ID,
            "alert_info": {
                "alert_severity": "WARNING",
                "alert_status": "ACTIVE",
                "alert_type": "PROFILE_PICTURE_LOST",
                "alert_description": "Please reupload your profile picture",
            },
        },
    ),
    "user_preferences": user_preferences,
    "calls": calls,
    "batch": batch,
}
KINDS = list(KIND_BUILDERS)


def sample(kind: str) -> dict:
    """A fresh Meta webhook body of `kind` (one of KINDS)."""
    try:
        build = KIND_BUILDERS[kind]
    except KeyError:
        raise KeyError(f"unknown sample kind {kind!r}; known kinds: {', '.join(KINDS)}") from None
    return build()
