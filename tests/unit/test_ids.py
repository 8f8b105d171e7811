import uuid

from inferq.shared.ids import token, uuid4_text


def test_uuid4_text_is_a_canonical_version_4_uuid() -> None:
    seen = {uuid4_text() for _ in range(1000)}
    assert len(seen) == 1000
    for text in seen:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_token_is_32_hex_digits() -> None:
    tokens = {token() for _ in range(1000)}
    assert len(tokens) == 1000
    assert all(len(t) == 32 and int(t, 16) >= 0 for t in tokens)
