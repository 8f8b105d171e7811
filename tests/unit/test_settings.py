"""shared/settings.py: one frozen settings object built from INFERQ_* variables."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferq.shared import settings as settings_mod
from inferq.shared.errors import ConfigError
from inferq.shared.settings import Settings, get_settings, redact_url, set_settings

PASSWORD = "s3cret"
SECRET_URLS = [
    f"redis://:{PASSWORD}@host:6379/0",
    f"redis://user:{PASSWORD}@host",
    f"rediss://:{PASSWORD}@host:6380/1",
    f"rediss://user:{PASSWORD}@cache.example.com:6380/2?ssl_cert_reqs=required",
]


@pytest.fixture(autouse=True)
def _fresh_process_settings() -> Iterator[None]:
    set_settings(None)
    yield
    set_settings(None)


# -- defaults and parsing ----------------------------------------------------------------------


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert s.broker_url == "redis://127.0.0.1:6379/0"
    assert s.result_backend == s.broker_url
    assert s.model_repository == Path("models")
    assert s.log_level == "INFO"
    assert s.log_format == "console"
    assert s.metrics_port == 9808
    assert s.visibility_timeout_s == 300.0
    assert s.restore_interval_s == 5.0
    # a tuning knob (batches held locally beyond the running one): any int >= 1
    assert isinstance(s.prefetch_batches, int) and s.prefetch_batches >= 1
    assert s.max_payload_bytes == 64 * 1024 * 1024
    assert s.max_image_pixels == 40_000_000
    assert s.result_ttl_s == 86_400
    assert s.spec_cache_ttl_s == 30.0
    assert s.idle_poll_s == 0.02
    assert s.heartbeat_s == 10.0
    assert s.models == ""
    assert s.model_list == []
    assert s.device == "cpu"


def test_env_values_are_parsed_to_their_field_types() -> None:
    env = {
        "INFERQ_BROKER_URL": "redis://broker:6379/3",
        "INFERQ_MODEL_REPOSITORY": "/srv/models",
        "INFERQ_LOG_LEVEL": "debug",
        "INFERQ_LOG_FORMAT": "json",
        "INFERQ_METRICS_PORT": "0",
        "INFERQ_VISIBILITY_TIMEOUT_S": "12.5",
        "INFERQ_PREFETCH_BATCHES": "4",
        "INFERQ_MAX_PAYLOAD_BYTES": "2048",
        "INFERQ_SPEC_CACHE_TTL_S": "1e-1",
        "INFERQ_MODELS": " shapes, resnet18 ,,",
        "INFERQ_DEVICE": "cuda:1",
    }
    s = Settings.from_env(env)
    assert s.broker_url == "redis://broker:6379/3"
    assert s.result_backend == "redis://broker:6379/3"
    assert s.model_repository == Path("/srv/models")
    assert isinstance(s.model_repository, Path)
    assert s.log_level == "DEBUG"
    assert s.log_format == "json"
    assert s.metrics_port == 0 and isinstance(s.metrics_port, int)
    assert s.visibility_timeout_s == 12.5 and isinstance(s.visibility_timeout_s, float)
    assert s.prefetch_batches == 4
    assert s.max_payload_bytes == 2048
    assert s.spec_cache_ttl_s == pytest.approx(0.1)
    assert s.model_list == ["shapes", "resnet18"]
    assert s.device == "cuda:1"


def test_empty_env_values_mean_default() -> None:
    s = Settings.from_env({"INFERQ_METRICS_PORT": "", "INFERQ_BROKER_URL": ""})
    assert s.metrics_port == 9808
    assert s.broker_url == "redis://127.0.0.1:6379/0"


def test_explicit_environ_mapping_ignores_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INFERQ_METRICS_PORT", "1234")
    assert Settings.from_env({}).metrics_port == 9808
    assert Settings.from_env().metrics_port == 1234


def test_result_backend_defaults_to_broker_and_can_differ() -> None:
    same = Settings.from_env({"INFERQ_BROKER_URL": f"redis://:{PASSWORD}@b:6379/1"})
    assert same.result_backend == f"redis://:{PASSWORD}@b:6379/1"
    apart = Settings.from_env(
        {"INFERQ_BROKER_URL": "redis://b/1", "INFERQ_RESULT_BACKEND": "rediss://r:6380/2"}
    )
    assert apart.broker_url == "redis://b/1"
    assert apart.result_backend == "rediss://r:6380/2"


@pytest.mark.parametrize("url", ["redis://h/0", "rediss://h:6380/0", "unix:///tmp/redis.sock"])
def test_accepted_url_schemes(url: str) -> None:
    assert Settings(broker_url=url).broker_url == url


def test_replace_returns_a_validated_copy() -> None:
    base = Settings()
    changed = base.replace(metrics_port=1)
    assert changed.metrics_port == 1 and base.metrics_port == 9808
    with pytest.raises(ConfigError, match="INFERQ_PREFETCH_BATCHES"):
        base.replace(prefetch_batches=0)


def test_get_settings_reads_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERQ_METRICS_PORT", "1111")
    first = get_settings()
    monkeypatch.setenv("INFERQ_METRICS_PORT", "2222")
    assert get_settings() is first
    assert first.metrics_port == 1111
    set_settings(None)
    assert get_settings().metrics_port == 2222
    mine = Settings(metrics_port=7)
    set_settings(mine)
    assert get_settings() is mine


# -- invalid values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("INFERQ_METRICS_PORT", "abc", "int"),
        ("INFERQ_METRICS_PORT", "3.5", "int"),
        ("INFERQ_PREFETCH_BATCHES", "two", "int"),
        ("INFERQ_VISIBILITY_TIMEOUT_S", "soon", "float"),
        ("INFERQ_HEARTBEAT_S", "1,5", "float"),
    ],
)
def test_unparseable_numbers_name_the_env_var(name: str, raw: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"{name} must be a {expected}, got '{raw}'"):
        Settings.from_env({name: raw})


@pytest.mark.parametrize("name", ["INFERQ_BROKER_URL", "INFERQ_RESULT_BACKEND"])
@pytest.mark.parametrize("url", [f"amqp://user:{PASSWORD}@host//", "http://host/", "host:6379"])
def test_invalid_scheme_names_the_env_var_and_hides_the_password(name: str, url: str) -> None:
    with pytest.raises(ConfigError, match=name) as info:
        Settings.from_env({name: url})
    assert "redis://, rediss:// or unix://" in str(info.value)
    assert PASSWORD not in str(info.value)


def test_invalid_log_format() -> None:
    with pytest.raises(ConfigError, match=r"INFERQ_LOG_FORMAT must be one of .*got 'xml'"):
        Settings.from_env({"INFERQ_LOG_FORMAT": "xml"})


def test_invalid_log_level() -> None:
    with pytest.raises(ConfigError, match=r"INFERQ_LOG_LEVEL must be one of .*got 'LOUD'"):
        Settings.from_env({"INFERQ_LOG_LEVEL": "loud"})


def test_invalid_device() -> None:
    with pytest.raises(ConfigError, match=r"INFERQ_DEVICE must be cpu or cuda:N, got 'mps'"):
        Settings.from_env({"INFERQ_DEVICE": "mps"})


@pytest.mark.parametrize(
    ("name", "raw"),
    [("INFERQ_PREFETCH_BATCHES", "0"), ("INFERQ_MAX_PAYLOAD_BYTES", "1023")],
)
def test_out_of_range_numbers_name_the_env_var(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=rf"{name} must be >= \d+, got {raw}"):
        Settings.from_env({name: raw})


@pytest.mark.parametrize(
    "field", ["visibility_timeout_s", "restore_interval_s", "idle_poll_s", "heartbeat_s"]
)
@pytest.mark.parametrize("raw", ["0", "-1"])
def test_non_positive_durations_are_refused(field: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=rf"{field}.* must be > 0, got {float(raw)}"):
        Settings.from_env({f"INFERQ_{field.upper()}": raw})


def test_non_positive_duration_message_names_the_env_var() -> None:
    with pytest.raises(ConfigError, match="INFERQ_VISIBILITY_TIMEOUT_S"):
        Settings.from_env({"INFERQ_VISIBILITY_TIMEOUT_S": "0"})


def test_nan_duration_is_refused() -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({"INFERQ_VISIBILITY_TIMEOUT_S": "nan"})


def test_negative_metrics_port_is_refused() -> None:
    with pytest.raises(ConfigError, match="INFERQ_METRICS_PORT"):
        Settings.from_env({"INFERQ_METRICS_PORT": "-5"})


def test_malformed_cuda_device_is_refused() -> None:
    with pytest.raises(ConfigError, match="INFERQ_DEVICE"):
        Settings.from_env({"INFERQ_DEVICE": "cudaX"})


def test_url_with_bad_port_is_refused_at_construction() -> None:
    with pytest.raises(ConfigError, match="INFERQ_BROKER_URL"):
        Settings(broker_url=f"redis://:{PASSWORD}@host:notaport/0")


@pytest.mark.parametrize(
    "field",
    [
        "visibility_timeout_s",
        "restore_interval_s",
        "idle_poll_s",
        "heartbeat_s",
        "spec_cache_ttl_s",
    ],
)
@pytest.mark.parametrize("raw", ["nan", "inf", "-inf"])
def test_non_finite_float_settings_are_refused_naming_the_env_var(field: str, raw: str) -> None:
    name = f"INFERQ_{field.upper()}"
    with pytest.raises(ConfigError, match=rf"{name} .*must be finite, got {float(raw)}"):
        Settings.from_env({name: raw})


def test_negative_spec_cache_ttl_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"INFERQ_SPEC_CACHE_TTL_S must be >= 0, got -1\.0"):
        Settings.from_env({"INFERQ_SPEC_CACHE_TTL_S": "-1"})


@pytest.mark.parametrize("raw", ["-1", "65536", "100000"])
def test_metrics_port_out_of_range_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match=rf"INFERQ_METRICS_PORT must be 0\.\.65535.*got {raw}"):
        Settings.from_env({"INFERQ_METRICS_PORT": raw})


@pytest.mark.parametrize("raw", ["0", "65535"])
def test_metrics_port_bounds_are_accepted(raw: str) -> None:
    assert Settings.from_env({"INFERQ_METRICS_PORT": raw}).metrics_port == int(raw)


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12"])
def test_well_formed_devices_are_accepted(device: str) -> None:
    assert Settings.from_env({"INFERQ_DEVICE": device}).device == device


@pytest.mark.parametrize("device", ["cuda:", "cuda:x", "cuda:-1", "cpu:0", "CPU", "cpu\n", " cuda"])
def test_malformed_devices_are_refused(device: str) -> None:
    with pytest.raises(ConfigError, match=r"INFERQ_DEVICE must be cpu or cuda:N"):
        Settings(device=device)


@pytest.mark.parametrize("name", ["INFERQ_BROKER_URL", "INFERQ_RESULT_BACKEND"])
@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{PASSWORD}@host:notaport/0",
        f"redis://:{PASSWORD}@host:70000/0",
        f"redis://:{PASSWORD}@[::1/0",
    ],
)
def test_unparseable_urls_are_refused_without_the_password(name: str, url: str) -> None:
    with pytest.raises(ConfigError, match=name) as info:
        Settings.from_env({name: url})
    assert PASSWORD not in str(info.value)


# -- secrets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", SECRET_URLS)
def test_redact_url_hides_the_password_and_keeps_the_rest(url: str) -> None:
    redacted = redact_url(url)
    assert PASSWORD not in redacted
    assert redacted == url.replace(PASSWORD, "***")


def test_redact_url_leaves_urls_without_password_alone() -> None:
    for url in ("redis://host:6379/0", "redis://user@host/0", "unix:///tmp/r.sock"):
        assert redact_url(url) == url


def test_redact_url_keeps_ipv6_brackets() -> None:
    assert redact_url(f"redis://:{PASSWORD}@[::1]:6379/0") == "redis://:***@[::1]:6379/0"
    assert redact_url(f"redis://u:{PASSWORD}@[::1]/0") == "redis://u:***@[::1]/0"
    s = Settings(broker_url=f"redis://:{PASSWORD}@[::1]:6379/0")
    assert "redis://:***@[::1]:6379/0" in repr(s)


def test_redact_url_never_raises_or_leaks_on_an_unparseable_url() -> None:
    assert PASSWORD not in redact_url(f"redis://:{PASSWORD}@[::1/0")


@pytest.mark.parametrize("url", SECRET_URLS)
def test_repr_and_str_never_show_the_password(url: str) -> None:
    s = Settings(broker_url=url, result_backend=url)
    for text in (repr(s), str(s), f"{s}", f"{s!r}"):
        assert PASSWORD not in text
        assert "***" in text


def test_repr_hides_a_separate_backend_password() -> None:
    s = Settings.from_env(
        {
            "INFERQ_BROKER_URL": "redis://broker/0",
            "INFERQ_RESULT_BACKEND": f"rediss://user:{PASSWORD}@backend:6380/0",
        }
    )
    text = repr(s)
    assert PASSWORD not in text
    assert "redis://broker/0" in text
    assert "rediss://user:***@backend:6380/0" in text
    assert "metrics_port=9808" in text


def test_repr_lists_each_field_once() -> None:
    text = repr(Settings())
    for f in dataclasses.fields(Settings):
        assert text.count(f"{f.name}=") == 1, f.name


# -- frozen ------------------------------------------------------------------------------------


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.metrics_port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.broker_url = "redis://other/0"  # type: ignore[misc]
    assert s.metrics_port == 9808


def test_every_field_has_its_own_env_var() -> None:
    names = [settings_mod._env_name(f.name) for f in dataclasses.fields(Settings)]
    assert len(set(names)) == len(names)
    assert all(n.startswith("INFERQ_") for n in names)


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("INFERQ_MALLOC_MMAP_THRESHOLD_MB", "-1", r"must be 0\.\.4096 .*got -1"),
        ("INFERQ_MALLOC_MMAP_THRESHOLD_MB", "5000", r"must be 0\.\.4096 .*got 5000"),
        ("INFERQ_TORCH_THREADS", "-2", r"must be >= 0 .*got -2"),
        ("INFERQ_WORKER_PROCESSES", "0", r"must be from 1 to 64, got 0"),
        ("INFERQ_WORKER_PROCESSES", "65", r"must be from 1 to 64, got 65"),
        ("INFERQ_OMP_WAIT_POLICY", "lazy", r"must be passive, active or empty .*got 'lazy'"),
    ],
)
def test_worker_tuning_settings_are_checked(name: str, raw: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"{name} {expected}"):
        Settings.from_env({name: raw})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("Yes", True), ("0", False), ("false", False)],
)
def test_supervise_reads_one_or_zero(raw: str, expected: bool) -> None:
    assert Settings().supervise is True
    assert Settings.from_env({"INFERQ_SUPERVISE": raw}).supervise is expected


def test_supervise_refuses_anything_else_naming_the_env_var() -> None:
    with pytest.raises(
        ConfigError, match=r"INFERQ_SUPERVISE must be 1 or 0 \(true or false\), got 'maybe'"
    ):
        Settings.from_env({"INFERQ_SUPERVISE": "maybe"})
