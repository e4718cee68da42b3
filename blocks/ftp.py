"""Prefect block for an FTP(S) remote store: host, port, user, password (secret), TLS on by default."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from erp_backup.adapters.storage.ftp import FtpParams, FtpStore


class FtpStorage(Block):
    """Where off-site copies go on an FTP server. FTPS (explicit TLS, ``AUTH TLS``) is used unless
    ``tls`` is off; plain FTP is refused unless ``allow_plain`` says so as well."""

    _block_type_name = "erp-backup FTP storage"
    _block_type_slug = "erp-backup-ftp-storage"
    _description = "FTP(S) server for the ERP backup's off-site copies (password stored as a secret)."

    host: str = Field(description="Server name or address.")
    port: int = Field(default=21, ge=1, le=65535)
    user: str = Field(default="anonymous")
    password: SecretStr | None = Field(default=None, description="The FTP user's password.")
    directory: str = Field(default="/", description="Directory on the server under which [remote] prefix lies.")
    tls: bool = Field(default=True, description="FTPS: explicit TLS for control and data connections.")
    allow_plain: bool = Field(default=False, description="Allow plain FTP (tls = false): password in clear.")
    verify_tls: bool = Field(default=True, description="Check the server's certificate (and its name).")
    ca_certificate: str = Field(default="", description="PEM CA certificate(s) to trust, e.g. a self-signed server's.")
    timeout_s: float = Field(default=60.0, gt=0)

    def params(self) -> FtpParams:
        return FtpParams(host=self.host, port=self.port, user=self.user,
                         password=self.password.get_secret_value() if self.password else "",
                         directory=self.directory, tls=self.tls, allow_plain=self.allow_plain,
                         verify_tls=self.verify_tls, ca_pem=self.ca_certificate, timeout_s=self.timeout_s)

    def store(self, prefix: str = "") -> FtpStore:
        return FtpStore(self.params(), prefix)
