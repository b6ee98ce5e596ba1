"""``moc params | flops | isoflop | info`` through ``moc.cli.main``."""

from __future__ import annotations

import json

import pytest

from moc.cli import main


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_params_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_json(capsys, "params", "paper-moc") == {
        "total": 371_292_932,
        "backbone": 147_874_560,
        "bank": 201_375_744,
        "memory_layers": 22_042_628,
    }


def test_params_with_override(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "params", "paper-moc", "--set", "memory.bank_sharing=per_layer")
    assert out["bank"] == 4 * 201_375_744


def test_flops_json(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "flops", "paper-moc")
    assert (out["forward"], out["backward"], out["total"]) == (
        459_171_802_488,
        918_343_604_976,
        1_377_515_407_464,
    )
    assert out["breakdown"]["memory_layer"]["each"] == 25_702_029_150
    assert out["routing"]["mode"] == "sequence"


def test_flops_seq_len_and_set(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "flops", "paper-dense-backbone", "--seq-len", "2048")
    assert out["seq_len"] == 2048
    assert out["breakdown"]["head"]["terms"]["lm_head"] == 2 * 2048 * 768 * 49152
    out = run_json(capsys, "flops", "paper-moc", "--set", "memory.routing=causal")
    assert out["routing"]["decisions"] == 16


def test_isoflop_json(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "isoflop", "paper-moc")
    assert out["dense_layers"] == 22
    assert out["mismatch"] == pytest.approx(0.0038, abs=5e-5)


def test_info_prints_readable_tables(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "paper-moc"]) == 0
    text = capsys.readouterr().out
    for expected in (
        "371,292,932",
        "201,375,744",
        "459,171,802,488",
        "17,424,982,016",
        "25,702,029,150",
        "77,563,973,632",
        "memory_attention",
        "22 layers",
        "+0.38%",
    ):
        assert expected in text


def test_info_json_bundles_everything(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "info", "tiny-moc")
    assert set(out) == {"params", "flops", "isoflop"}
    assert out["flops"]["seq_len"] == 128


def test_text_tables_for_dense(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "paper-dense-iso"]) == 0
    text = capsys.readouterr().out
    assert "495,763,542,016" in text
    assert "memory layer" not in text and "routing" not in text
    assert main(["params", "paper-dense-iso"]) == 0
    assert "202,937,088" in capsys.readouterr().out


def test_bad_seq_len_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["flops", "tiny-moc", "--seq-len", "0"])
    assert exc.value.code == 2
    assert "positive whole number" in capsys.readouterr().err


def test_unknown_config_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "paper-mco"]) == 2
    assert "paper-moc" in capsys.readouterr().err  # suggests the close preset name


def test_batch_size_on_isoflop_flops_and_info(capsys: pytest.CaptureFixture[str]) -> None:
    causal = ("paper-moc", "--set", "memory.routing=causal")
    iso = run_json(capsys, "isoflop", *causal, "--batch-size", "16")
    assert (iso["batch_size"], iso["dense_layers"]) == (16, 28)
    assert iso["moc_forward"] == pytest.approx(572e9, rel=0.03)
    assert run_json(capsys, "isoflop", *causal)["dense_layers"] > 28  # batch 1: every decision apart
    flops = run_json(capsys, "flops", *causal, "--batch-size", "16")
    assert flops["forward"] == iso["moc_forward"]
    assert flops["routing"]["batch_decisions"] == 256
    info = run_json(capsys, "info", *causal, "--batch-size", "16")
    assert info["isoflop"]["dense_layers"] == 28 and info["flops"]["batch_size"] == 16
    assert main(["flops", *causal, "--batch-size", "16"]) == 0
    assert "micro-batch 16" in capsys.readouterr().out


def test_bad_batch_size_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["isoflop", "tiny-moc", "--batch-size", "0"])
    assert exc.value.code == 2
    assert "sequences per micro-batch" in capsys.readouterr().err
