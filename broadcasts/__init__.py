"""Broadcast notices: an audience expression, per-language templates, durable batched fan-out.

Read top to bottom: `audience` (who), `templates` (what each resident gets), `schedule` (when:
quiet hours), `service` (create / preview / send / pause / resume / cancel / status), `fanout`
(the audience becomes delivery rows, which go out the one way every message does:
gateway.delivery), `cli` and `api` (the operator's two doors).
"""
