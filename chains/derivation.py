"""Deposit addresses from a tenant's extended public key: BIP-32 public (non-hardened) derivation of
`m/0/<index>` below the xpub (the xpub is usually the account node `m/44'/60'/0'`), then the Ethereum address
of the child key. No private key is involved or stored anywhere."""

from __future__ import annotations

from bip32 import BIP32
from coincurve import PublicKey
from eth_utils import keccak

from wallet.core.errors import error_class

InvalidXpub = error_class("invalid_xpub", 400, "Not a valid BIP-32 extended public key")


def validate_xpub(xpub: str) -> None:
    """Raise `InvalidXpub` unless `xpub` is an extended *public* key."""
    if not xpub.startswith(("xpub", "tpub")):
        raise InvalidXpub()
    try:
        BIP32.from_xpub(xpub)
    except Exception as exc:
        raise InvalidXpub() from exc


def xpub_key(xpub: str) -> bytes:
    """What derivation uses of an xpub, its chain code and public key: two encodings of one key (xpub and tpub
    versions, another depth or parent fingerprint) derive the same addresses and give the same bytes."""
    node = BIP32.from_xpub(xpub)
    return node.chaincode + node.pubkey


def pubkey_to_address(compressed: bytes) -> str:
    uncompressed = PublicKey(compressed).format(compressed=False)
    return "0x" + keccak(uncompressed[1:])[-20:].hex()


def derive_address(xpub: str, index: int) -> str:
    """The lower-case address of `m/0/<index>` below `xpub`."""
    node = BIP32.from_xpub(xpub)
    return pubkey_to_address(node.get_pubkey_from_path(f"m/0/{index}"))
