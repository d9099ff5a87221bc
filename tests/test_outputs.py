"""The output-folder policy shared by every command that writes a folder or a file (temde.outputs)."""
import json

import pytest

from temde.cli import main
from temde.outputs import (RECORD_FILE, OutputFolderError, claim_file, claim_folder, differences, inspect_folder)


def test_a_missing_or_empty_folder_becomes_the_commands_own(tmp_path):
    claim = claim_folder(tmp_path / "new" / "deep", "demo", {"seeds": (0, 1), "epochs": 2})
    assert claim.state == "new"
    record = json.loads((tmp_path / "new" / "deep" / RECORD_FILE).read_text())
    assert record == {"command": "demo", "settings": {"seeds": [0, 1], "epochs": 2}}  # as JSON reads it back
    (tmp_path / "empty").mkdir()
    assert claim_folder(tmp_path / "empty", "demo", {}).state == "new"


def test_same_settings_are_reused_other_settings_refused_or_replaced_with_force(tmp_path):
    folder = tmp_path / "out"
    claim_folder(folder, "demo", {"seeds": [0], "epochs": 2, "data": None})
    (folder / "results.json").write_text("{}")
    assert claim_folder(folder, "demo", {"seeds": (0,), "epochs": 2, "data": None}).state == "same"
    with pytest.raises(OutputFolderError) as refused:
        claim_folder(folder, "demo", {"seeds": [0, 1], "epochs": 14, "data": None}, resume_hint=", or --resume")
    assert str(refused.value) == (f"{folder}: holds a `temde demo` output made with other settings: --epochs 14 "
                                  f"(recorded: 2); --seeds 0,1 (recorded: 0); pass --force to replace it, or "
                                  f"--resume, or choose another --out")
    assert json.loads((folder / RECORD_FILE).read_text())["settings"]["epochs"] == 2  # a refusal writes nothing
    claim = claim_folder(folder, "demo", {"seeds": [0, 1], "epochs": 14, "data": None}, force=True)
    assert claim.state == "replace" and len(claim.differences) == 2
    assert json.loads((folder / RECORD_FILE).read_text())["settings"]["epochs"] == 14
    # --force with the same settings still means "start over"
    assert claim_folder(folder, "demo", {"seeds": [0, 1], "epochs": 14, "data": None}, force=True).state == "replace"


def test_a_folder_holding_anything_else_is_refused_even_with_force(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("...")
    with pytest.raises(OutputFolderError, match=r"mine: not empty, not a `temde demo` output folder"):
        claim_folder(tmp_path / "mine", "demo", {}, force=True)
    claim_folder(tmp_path / "prepared", "prepare", {"seed": 0})
    (tmp_path / "prepared" / "train_ims.npy").write_bytes(b"")
    with pytest.raises(OutputFolderError, match=r"prepared: a `temde prepare` output, not a `temde demo` output"):
        claim_folder(tmp_path / "prepared", "demo", {}, force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="exists and is not a folder"):
        claim_folder(tmp_path / "file", "demo", {})
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["thesis.tex"]


def test_older_outputs_are_recognised_and_compared_where_they_tell_their_settings(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"settings": {"epochs": 14}}))

    def older(path):
        return json.loads((path / "results.json").read_text())["settings"] if (path / "results.json").exists() \
            else None

    assert inspect_folder(folder, "demo", older) == {"epochs": 14}
    assert claim_folder(folder, "demo", {"epochs": 14}, legacy=older).state == "same"
    with pytest.raises(OutputFolderError, match=r"--epochs 2 \(recorded: 14\)"):
        claim_folder(folder, "demo", {"epochs": 2}, legacy=older)
    with pytest.raises(OutputFolderError, match="not recorded"):  # recognised, but nothing to compare
        claim_folder(folder, "demo", {"epochs": 14}, legacy=lambda path: {})


def test_differences_name_the_option_and_both_values():
    assert differences({"dev_subset": None, "lr": 0.1}, {"dev_subset": 20, "lr": 0.1}) == \
        ["--dev-subset 20 (recorded: none)"]
    assert differences({"captions_sha256": "a"}, {"captions_sha256": "b"}, {"captions_sha256": "the captions"}) == \
        ["the captions b (recorded: a)"]


def test_an_output_file_is_never_replaced_without_force(tmp_path):
    target = tmp_path / "pool.json"
    claim_file(target)  # missing: fine
    target.write_text("{}")
    with pytest.raises(OutputFolderError, match="pool.json: exists; pass --force"):
        claim_file(target)
    claim_file(target, force=True)
    (tmp_path / "new.png").write_text("")  # the figure written beside a result counts too
    with pytest.raises(OutputFolderError, match="new.png: exists"):
        claim_file(tmp_path / "new.json", also=[tmp_path / "new.png"])


@pytest.mark.parametrize("what", ["pool", "model", "index", "two-stage"])
def test_bench_refuses_an_existing_result_before_measuring(tmp_path, capsys, what):
    out = tmp_path / "result.json"
    out.write_text('{"earlier": "measurement"}')
    assert main(["bench", what, "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"temde bench: error: {out}: exists; pass --force to replace it, "
                                               f"or choose another --out")
    assert out.read_text() == '{"earlier": "measurement"}'


def test_ablate_refuses_before_training_and_merge_follows_the_policy(tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "draft.md").write_text("mine")
    assert main(["ablate", "--data", str(tmp_path / "data"), "--out", str(notes), "--variants", "mean",
                 "--seeds", "0", "--device", "cpu"]) == 2
    assert "not a `temde ablate` output folder" in capsys.readouterr().err
    parts = []
    for name, rsum in (("a", 100.0), ("b", 110.0)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "ablation.csv").write_text("variant,seed,test_rsum,best_dev_rsum,train_seconds,i2t_r1,t2i_r1,"
                                             f"pool_forward_ms\nmean,0,{rsum},1,1,1,1,0.5\n")
        parts.append(str(folder))
    merged = tmp_path / "merged"
    assert main(["ablate", "--merge", *parts, "--out", str(merged)]) == 0
    assert main(["ablate", "--merge", *parts, "--out", str(merged)]) == 0  # the same merge again
    assert main(["ablate", "--merge", parts[0], "--out", str(merged)]) == 2  # another one: refused
    assert "--merge" in capsys.readouterr().err
    assert main(["ablate", "--merge", parts[0], "--out", str(merged), "--force"]) == 0
    assert (merged / "ablation.csv").read_text().count("\nmean,") == 1
