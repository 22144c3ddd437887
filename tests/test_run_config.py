"""KeepingConfigCallback: a command's config never replaces another command's config.yaml."""

from __future__ import annotations

from types import SimpleNamespace

from lightning.pytorch.cli import LightningArgumentParser

from densemtl.run_config import KeepingConfigCallback, free_config_name


def test_free_config_name_never_names_an_existing_file(tmp_path):
    assert free_config_name(tmp_path, "test") == "config.yaml"
    (tmp_path / "config.yaml").write_text("fit")
    assert free_config_name(tmp_path, "test") == "config-test.yaml"
    (tmp_path / "config-test.yaml").write_text("test")
    assert free_config_name(tmp_path, "test") == "config-test-1.yaml"
    assert free_config_name(tmp_path, "predict") == "config-predict.yaml"


def _trainer(log_dir):
    return SimpleNamespace(log_dir=str(log_dir), is_global_zero=True, strategy=SimpleNamespace(broadcast=lambda x: x))


def test_a_second_command_into_the_same_folder_keeps_the_first_config(tmp_path):
    parser = LightningArgumentParser()
    parser.add_argument("--lr", type=float, default=0.1)
    (tmp_path / "config.yaml").write_text("the training run's config\n")
    for expected in ("config-test.yaml", "config-test-1.yaml"):
        callback = KeepingConfigCallback(parser, parser.parse_args(["--lr", "0.5"]), overwrite=True)
        callback.setup(_trainer(tmp_path), None, "test")
        assert "lr: 0.5" in (tmp_path / expected).read_text()
    assert (tmp_path / "config.yaml").read_text() == "the training run's config\n"
    fresh = tmp_path / "fresh"
    callback = KeepingConfigCallback(parser, parser.parse_args([]), overwrite=True)
    callback.setup(_trainer(fresh), None, "fit")
    assert "lr: 0.1" in (fresh / "config.yaml").read_text()
