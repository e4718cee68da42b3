"""Prefect notification block of ours, built on Apprise: e-mail, DingTalk, WeCom, Feishu, Slack, Twilio, webhooks.

Prefect ships no block for SMTP e-mail, DingTalk, WeCom or Feishu; Apprise (installed with Prefect)
speaks all of them. The block holds one or more Apprise URLs, each a secret (they carry passwords,
tokens and signing keys). The Prefect **server** sends the message when an automation fires, so it
must be able to import this class: it finds it through the ``prefect.collections`` entry point of
this package (pyproject.toml), at server start-up.
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.notifications import AbstractAppriseNotificationBlock
from pydantic import Field, SecretStr

URL_SCHEMES = ("mailto", "mailtos", "dingtalk", "wecombot", "feishu", "slack", "twilio", "json", "jsons")
"""Apprise schemes the README documents (Apprise accepts more; ``setup`` checks only that Apprise knows the URL)."""


class ErpBackupNotifications(AbstractAppriseNotificationBlock):
    """Where erp-backup alerts go: every URL gets every message.

    Examples: ``mailtos://user:pass@smtp.example.com?to=ops@example.com``,
    ``dingtalk://token/secret`` (signed), ``wecombot://key``, ``feishu://token``,
    ``slack://T000/B000/XXXX``, ``twilio://SID:token@+15551234567/+15557654321``,
    ``json://alerts.example.com/hook`` (a plain webhook: JSON POST)."""

    _block_type_name = "erp-backup notifications"
    _block_type_slug = "erp-backup-notifications"
    _description = ("Alert targets of the ERP backup (Apprise URLs: mailto://, dingtalk://, wecombot://, "
                    "feishu://, slack://, twilio://, json://). Stored as secrets.")

    urls: list[SecretStr] = Field(
        default_factory=list,
        title="Apprise URLs",
        description="One Apprise URL per target (secrets: they hold passwords and tokens).",
    )

    def block_initialization(self) -> None:
        from apprise import Apprise, AppriseAsset

        asset = AppriseAsset(app_id="erp-backup", app_desc="erp-backup alerts", app_url="https://prefect.io")
        client: Any = Apprise(asset=asset)
        for url in self.urls:
            client.add(url.get_secret_value())
        self._apprise_client = client
