"""Meta intake: the verification GET, the signed POST, the parser that turns a webhook
body into events, and what the intake transaction draws beside them.
"""
