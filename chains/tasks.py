"""Celery tasks of the chains app (thin: each calls one service)."""

from __future__ import annotations

from celery import shared_task

from chains.siwe import siwe_nonces_purge


@shared_task(name="chains.purge_siwe_nonces", ignore_result=True, acks_late=True)
def purge_siwe_nonces() -> int:
    """Delete expired Sign-In with Ethereum nonces of every tenant (beat entry `chains-purge-siwe-nonces`)."""
    return siwe_nonces_purge()
