"""A webhook URL's syntax as one regular expression, for `WebhookRequest.url`: what the
OpenAPI document promises and pydantic checks are the same rule.

It accepts only URLs that `shared.webhooks.check_url` can parse (http or https, a host
name or an IP literal, a port from 0 to 65535), so a URL the schema allows is refused
after it only by the deployment's policy (an internal address, a host off the
allow-list): 403, never 400 (`web.api.check_webhook`). It is stricter than a URL parser
in places (ASCII host names, no IPv6 zone ids), never looser. ECMA, Python and Rust
regular expressions all read it alike.
"""
from __future__ import annotations

_H16 = "[0-9A-Fa-f]{1,4}"
_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"  # no leading zeros (Python's ipaddress refuses them)
_IPV4 = rf"({_OCTET}\.){{3}}{_OCTET}"
_IPV6 = "(" + "|".join([  # RFC 4291's text forms
    rf"({_H16}:){{7}}{_H16}",
    rf"({_H16}:){{1,7}}:",
    rf"({_H16}:){{1,6}}:{_H16}",
    rf"({_H16}:){{1,5}}(:{_H16}){{1,2}}",
    rf"({_H16}:){{1,4}}(:{_H16}){{1,3}}",
    rf"({_H16}:){{1,3}}(:{_H16}){{1,4}}",
    rf"({_H16}:){{1,2}}(:{_H16}){{1,5}}",
    rf"{_H16}:(:{_H16}){{1,6}}",
    rf":(:{_H16}){{1,7}}",
    "::",
    rf"({_H16}:){{6}}{_IPV4}",
    rf"::([Ff]{{4}}(:0{{1,4}})?:)?{_IPV4}",
    rf"({_H16}:){{1,4}}:{_IPV4}",
]) + ")"
_PORT = "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
_USERINFO = "[A-Za-z0-9._~%!$&'()*+,;=:-]*@"
_REG_NAME = "[A-Za-z0-9._~%!$&'()*+,;=-]+"

WEBHOOK_URL_PATTERN = (rf"^[hH][tT][tT][pP][sS]?://({_USERINFO})?({_REG_NAME}|\[{_IPV6}\])(:{_PORT})?"
                       rf"([/?#][^\x00\s]*)?$")
