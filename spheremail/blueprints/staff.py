"""Staff-wide pages: settings and the audit log."""
from __future__ import annotations

from flask import Blueprint

from spheremail.security import Capability, allow

bp = Blueprint("staff", __name__, url_prefix="/staff")


# --- Audit log (Operator only) ---------------------------------------------------------------

AUDIT_PAGE_SIZE = 50


@bp.route("/audit-log")
@allow(Capability.VIEW_AUDIT)
def audit_log():
    """Audit events, newest first, filtered by action, paged.

    Three queries whatever the number of rows: the distinct actions for the filter, the
    count and the page (names come from the row's own ``actor_email``, no lookups per row).
    """
    from flask import request

    from spheremail.extensions import db
    from spheremail.htmx import render
    from spheremail.models import AuditEvent

    actions = db.session.execute(
        db.select(AuditEvent.action).distinct().order_by(AuditEvent.action)
    ).scalars().all()
    action = "".join(ch for ch in (request.args.get("action") or "") if ch.isprintable()).strip()[:60]
    query = db.select(AuditEvent).order_by(AuditEvent.created_at.desc(), AuditEvent.id.desc())
    if action:
        query = query.where(AuditEvent.action == action)
    from spheremail.request_args import page_arg

    pagination = db.paginate(query, page=page_arg(), per_page=AUDIT_PAGE_SIZE, error_out=False)
    return render("staff/audit_log.html", "staff/partials/audit_table.html",
                  pagination=pagination, events=pagination.items, actions=actions, action=action)


# --- Operator settings (customers and recipients) --------------------------------------------

@bp.route("/settings", methods=["GET", "POST"])
@allow(Capability.MANAGE_CUSTOMERS)
def settings():
    """The status (free or paid) that recipients get when added without one, e.g. by customers."""
    from flask import flash, redirect, url_for
    from flask_wtf import FlaskForm
    from wtforms import RadioField
    from wtforms.validators import InputRequired

    from spheremail.extensions import db
    from spheremail.htmx import render
    from spheremail.models import Setting
    from spheremail.services import audit
    from spheremail.services.recipients import default_status

    class SettingsForm(FlaskForm):
        new_recipient_status = RadioField(
            "Status of new additional recipients",
            choices=[("paid", "Paid (charged monthly)"), ("free", "Free")],
            validators=[InputRequired("Choose free or paid.")],
        )

    form = SettingsForm(data={"new_recipient_status": default_status()})
    if form.validate_on_submit():
        value = form.new_recipient_status.data
        if value != default_status():
            Setting.put("new_recipient_status", value)
            audit.record("setting_changed", f"new recipients are {value}")
            db.session.commit()
        flash("Settings saved.", "success")
        return redirect(url_for("staff.settings"), code=303)
    return render("staff/settings.html", form=form)
