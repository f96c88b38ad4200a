"""smtp: SMTP in: the listeners' protocol on aiosmtpd, who may submit what (access policy, AUTH
under TLS, limits, anvil), and the ingest worker processes.
"""
