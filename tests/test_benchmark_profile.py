"""The profile benchmark: HLO parsing, the per-kind breakdown, and a real traced step."""

import pytest

from efficientnet_jax.benchmarks import profile

HLO = """
ENTRY %main (p: f32[2,8]) -> f32[2,8] {
  %multiply_add_fusion.3 = f32[2,8]{1,0} fusion(%p), kind=kLoop, calls=%c1, metadata={op_name="jit(f)/jvp()/add" stack_frame_id=1}
  %multiply_add_fusion.12 = f32[2,8]{1,0} fusion(%p), kind=kLoop, calls=%c2, metadata={op_name="jit(f)/transpose(jvp())/add_any"}
  %dot.7 = f32[8,8]{1,0} dot(%p, %p), lhs_contracting_dims={0}, rhs_contracting_dims={0}
  ROOT %copy = f32[2,8]{1,0} copy(%multiply_add_fusion.3)
}
"""


def test_instructions_reads_names_shapes_and_op_names():
  program = profile.instructions(HLO)
  assert program["multiply_add_fusion.12"] == ("f32[2,8]{1,0}", "jit(f)/transpose(jvp())/add_any")
  assert program["dot.7"] == ("f32[8,8]{1,0}", "")
  assert program["copy"].op_name == ""


def test_breakdown_groups_by_kind_and_pass_and_ignores_other_events():
  events = [("multiply_add_fusion.3", 0.002), ("multiply_add_fusion.12", 0.004), ("dot.7", 0.001),
            ("dot.7", 0.001), ("ThunkExecutor::Execute", 5.0), ("copy", 0.002)]
  rows = profile.breakdown(events, profile.instructions(HLO))
  assert [(r["phase"], r["kind"]) for r in rows] == [
      ("bwd", "multiply_add_fusion"), ("rest", "multiply_add_fusion"), ("rest", "dot"),
      ("rest", "copy")]
  assert rows[0]["seconds"] == pytest.approx(0.004) and rows[0]["share"] == pytest.approx(0.4)
  assert rows[2]["count"] == 1 and rows[2]["seconds"] == pytest.approx(0.002)
  assert sum(r["share"] for r in rows) == pytest.approx(1.0)
  assert "all ops" in profile.format_rows(rows, top=2).splitlines()[-1]


def test_profile_of_a_real_train_step(capsys):
  profile.main(["--arch=b0", "--batch=2", "--res=32", "--warmup=1", "--top=1000"])
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith("b0 32x32 batch 2 float32 train step")
  rows = lines[3:-1]
  assert any(r.startswith("bwd") for r in rows) and any(r.startswith("rest") for r in rows)
  shares = [float(r.split()[3].rstrip("%")) for r in rows]
  assert sum(shares) == pytest.approx(100.0, abs=0.05 * len(rows))  # Each rounded to 0.1.
