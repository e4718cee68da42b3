"""erp-backup: backup and disaster recovery for a Django ERP deployment."""

__version__ = "0.1.0"
