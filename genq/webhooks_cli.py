"""`genq webhooks`: a tenant's signing secret and default endpoint (operators; these
commands talk to the database, like `genq keys`)."""
from __future__ import annotations

import click


@click.group()
def webhooks() -> None:
    """Webhook secrets and default endpoints of tenants."""


@webhooks.command("set")
@click.option("--tenant", required=True, help="the tenant whose jobs' events are sent")
@click.option("--event", "events", multiple=True, type=click.Choice(["job.completed", "job.failed", "job.cancelled"]),
              help="an event to send (repeat; default all three)")
@click.option("--rotate", is_flag=True, help="make a new signing secret (the old one stops working)")
@click.argument("url", required=False)
def webhooks_set(tenant: str, events: tuple[str, ...], rotate: bool, url: str | None) -> None:
    """Send the tenant's job events to URL when a job names no webhook of its own (no URL:
    no default endpoint; `--rotate` alone only makes a new secret, keeping the endpoint).
    The secret is printed when it is made, and never again."""
    from shared.db import session_scope
    from shared.errors import GenqError
    from shared.settings import get_settings
    from shared.webhook_orm import TenantWebhook
    from shared.webhooks import check_url, rotate_secret, set_tenant_endpoint

    settings = get_settings()
    try:
        if url is not None:
            check_url(url, settings, field="URL")
        with session_scope(settings.database_url) as session:
            if rotate and url is None and not events:
                secret, url = rotate_secret(session, tenant), session.get(TenantWebhook, tenant).url
            else:
                _row, secret = set_tenant_endpoint(session, tenant, url, events or None, rotate=rotate)
    except GenqError as exc:
        raise click.ClickException(exc.message) from None
    if secret:
        click.echo(secret)
        click.echo(f"signing secret of tenant {tenant}: shown this once; receivers verify with it", err=True)
    click.echo(f"tenant {tenant}: {'default endpoint ' + url if url else 'no default endpoint'}", err=True)


@webhooks.command("show")
@click.option("--tenant", required=True)
def webhooks_show(tenant: str) -> None:
    """The tenant's default endpoint and events (never its secret)."""
    from shared.db import session_scope
    from shared.settings import get_settings
    from shared.webhook_orm import TenantWebhook

    with session_scope(get_settings().database_url) as session:
        row = session.get(TenantWebhook, tenant)
        if row is None:
            raise click.ClickException(f"tenant {tenant} has no webhook settings")
        state = f"disabled {row.disabled_at:%Y-%m-%d %H:%M} (it answered 410)" if row.disabled_at else "active"
        click.echo(f"{tenant}  {row.url or '(no default endpoint)'}  {','.join(row.events)}  {state}")
