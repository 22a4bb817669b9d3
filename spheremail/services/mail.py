"""Send email over SMTP (a real server; aiosmtpd in tests)."""
from __future__ import annotations

import smtplib
from email.message import EmailMessage

from flask import current_app, render_template


class MailError(Exception):
    """The SMTP server could not be reached or refused the message."""


def send_email(to: str, subject: str, template: str, attachments=(), **context) -> EmailMessage:
    """Render ``template`` (a text template under templates/email/) and send it to ``to``.

    ``attachments`` is a list of (filename, mimetype, bytes). Raises MailError on failure.
    """
    cfg = current_app.config
    msg = EmailMessage()
    msg["From"] = cfg["MAIL_SENDER"]
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(render_template(template, **context))
    for filename, mimetype, data in attachments:
        maintype, _, subtype = mimetype.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    if cfg.get("MAIL_SUPPRESS"):
        current_app.logger.info("mail suppressed: %s to %s", subject, to)
        return msg
    try:
        with smtplib.SMTP(cfg["MAIL_SERVER"], cfg["MAIL_PORT"], timeout=10) as smtp:
            if cfg.get("MAIL_USE_TLS"):
                smtp.starttls()
            if cfg.get("MAIL_USERNAME"):
                smtp.login(cfg["MAIL_USERNAME"], cfg["MAIL_PASSWORD"] or "")
            smtp.send_message(msg)
    except (OSError, smtplib.SMTPException) as exc:
        current_app.logger.warning("could not send mail to %s: %s", to, exc)
        raise MailError(str(exc)) from exc
    return msg
