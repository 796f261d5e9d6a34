"""Loaded by every Python process whose PYTHONPATH starts with scripts/rehearse (scripts/gpu_session.sh
--rehearse): imports of packages the lent GPU machine lacks fail here as they would there."""
import device_packages

device_packages.install()
