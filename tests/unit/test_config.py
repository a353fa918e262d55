"""Configs refuse bad values with a message that names the parameter."""

import pytest

from dealrec_tasks.config import ReplayConfig, S3Config, SamplesConfig, SyntheticConfig, parse_dt
from dealrec_tasks.errors import ConfigError


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SamplesConfig(max_len=0), "max_len=0"),
        (lambda: SamplesConfig(test_days=-1), "test_days=-1"),
        (lambda: ReplayConfig(dataset="games", days=2), "days=2"),
        (lambda: ReplayConfig(dataset="games", start="2026-13-01"), "start='2026-13-01'"),
        (lambda: ReplayConfig(), "give the imported dataset to replay"),
        (lambda: SyntheticConfig(return_rate=1.5), "return_rate=1.5"),
        (lambda: S3Config(endpoint_url="localhost:9000"), "endpoint_url='localhost:9000'"),
        (lambda: SamplesConfig.from_dict({"max_len": 5, "maxlen": 3}), "unknown parameter"),
        (lambda: parse_dt("2026/01/01"), "dt='2026/01/01'"),
    ],
)
def test_bad_values_name_the_parameter(make, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        make()


def test_round_trip_and_secret_hidden():
    cfg = SamplesConfig(max_len=20)
    assert SamplesConfig.from_dict(cfg.to_dict()) == cfg
    s3 = S3Config.from_env({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": "http://h:1"})
    assert s3.endpoint_url == "http://h:1" and s3.secret_key == "s"
    assert s3.to_dict()["secret_key"] == "***"
