"""`kvtier bench replay`: a synthetic chat trace through every tier, every block served checked."""
import json

from kvtier.cli.main import main


def test_replay_json_reports_hits_in_every_tier_and_verifies_blocks(capsys, tmp_path):
    assert main(["bench", "replay", "--json", "--conversations", "6", "--turns", "3", "--device-blocks", "24",
                 "--host-blocks", "16", "--disk", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["hit_rate"]) == {"device", "host", "disk"}
    assert report["hit_rate"]["disk"] > 0 and report["verified_blocks"] > 0
    assert report["cached_tokens"] <= report["prompt_tokens"] and report["dropped_blocks"] == 0
    hits = round(sum(report["hit_rate"].values()) * report["lookup_blocks"])
    assert hits + report["miss_blocks"] == report["lookup_blocks"] and hits == report["verified_blocks"]
    assert any(tmp_path.rglob("*.kvb"))
