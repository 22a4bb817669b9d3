"""Database models, one module per domain. Import from here: ``from spheremail.models import Customer``."""
from spheremail.models.user import User, Role, LoginFailure  # noqa: F401
from spheremail.models.customer import (  # noqa: F401
    Customer,
    CustomerStatus,
    MailboxNumberChange,
    Recipient,
    RecipientStatus,
)
from spheremail.models.audit import AuditEvent  # noqa: F401
from spheremail.models.setting import Setting  # noqa: F401
from spheremail.models.jobs import JobLease, JobSlot  # noqa: F401
from spheremail.models.billing import (  # noqa: F401
    BillingDetails, Invoice, InvoiceLine, InvoiceSequence, InvoiceStateError, InvoiceStatus,
    OneOffFee, Payment, Plan,
)
from spheremail.models.integrations import (  # noqa: F401
    ConnectionState, ExportState, IntegrationConnection, InvoiceExport, LinkSource, MemberLink, SyncRun,
)
from spheremail.models.payments import (  # noqa: F401
    AttemptKind, AttemptStatus, GatewayCustomer, PaymentAttempt, StripeEvent,
)
