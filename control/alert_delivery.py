"""Delivery of alert changes outside the cluster: a webhook (an HTTP POST of JSON) and e-mail
(SMTP), as the cluster's settings (`cluster:policy`, `PUT /v1/cluster`) ask. alert_mgr on the
master calls `deliver` for every alert it raises or clears; delivery is best effort, bounded by
DELIVERY_TIMEOUT, and never holds up the evaluation of alerts (a failure is logged).

Settings (rest_models.ClusterPolicy): `alerts_webhook_url` (http or https; empty: none);
`email_alerts` (RE's switch) with `alerts_email_to`, `email_from`, `smtp_host`, `smtp_port`,
`smtp_username`, `smtp_password`, `smtp_use_tls` (STARTTLS).

The webhook's body: `{"cluster": <fqdn>, "alert": <the alert as /v1/*/alerts shows it, with
object_type and object_uid>, "event": <the event-log entry>}`.
"""

from __future__ import annotations

import logging
import smtplib
from email.message import EmailMessage

import httpx
import trio

from control.alerts import public_alert

log = logging.getLogger("alert_mgr")

DELIVERY_TIMEOUT = 5.0


def webhook_body(fqdn: str, alert: dict, event: dict) -> dict:
    return {"cluster": fqdn, "event": event, "alert": {
        **public_alert(alert), "object_type": alert.get("object_type"),
        "object_uid": alert.get("object_uid")}}


def email_message(policy: dict, fqdn: str, alert: dict, event: dict) -> EmailMessage:
    msg = EmailMessage()
    state = "raised" if alert.get("state") else "cleared"
    msg["Subject"] = f"[{fqdn}] {alert.get('severity')} {alert.get('name')} {state}"
    msg["From"] = policy.get("email_from") or f"dmc@{fqdn}"
    msg["To"] = ", ".join(policy.get("alerts_email_to") or [])
    msg.set_content(event.get("description", ""))
    return msg


def _send_mail(policy: dict, msg: EmailMessage) -> None:
    with smtplib.SMTP(policy.get("smtp_host") or "localhost", policy.get("smtp_port") or 25,
                      timeout=DELIVERY_TIMEOUT) as smtp:
        if policy.get("smtp_use_tls"):
            smtp.starttls()
        if policy.get("smtp_username"):
            smtp.login(policy["smtp_username"], policy.get("smtp_password") or "")
        smtp.send_message(msg)


async def deliver(policy: dict, fqdn: str, alert: dict, event: dict) -> None:
    """Send one alert change wherever the cluster's settings say; errors are logged."""
    url = policy.get("alerts_webhook_url")
    if url:
        try:
            async with httpx.AsyncClient(timeout=DELIVERY_TIMEOUT) as client:
                reply = await client.post(url, json=webhook_body(fqdn, alert, event))
            if reply.status_code >= 300:
                log.warning("webhook %s answered %d", url, reply.status_code)
        except httpx.HTTPError as exc:
            log.warning("webhook %s not delivered: %r", url, exc)
    if policy.get("email_alerts") and policy.get("alerts_email_to"):
        try:
            await trio.to_thread.run_sync(_send_mail, policy,
                                          email_message(policy, fqdn, alert, event))
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("alert e-mail not sent: %r", exc)
