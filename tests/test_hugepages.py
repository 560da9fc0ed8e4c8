"""The re-exec that puts glibc's malloc on transparent huge pages."""

import os
import platform
import subprocess
import sys

import pytest

from efficientnet_jax import hugepages

GLIBC = ("glibc", "2.36")


def test_tunable_added_only_where_it_changes_something():
  assert hugepages.tunables_with_huge_pages({}, "madvise", GLIBC) == hugepages.TUNABLE
  kept = hugepages.tunables_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                                            "madvise", GLIBC)
  assert kept == "glibc.malloc.arena_max=2:" + hugepages.TUNABLE
  assert hugepages.tunables_with_huge_pages({}, "always", GLIBC) is None
  assert hugepages.tunables_with_huge_pages({}, "never", GLIBC) is None
  assert hugepages.tunables_with_huge_pages({}, "madvise", ("glibc", "2.31")) is None
  assert hugepages.tunables_with_huge_pages({}, "madvise", ("", "")) is None
  assert hugepages.tunables_with_huge_pages({hugepages.OPT_OUT_ENV: "0"}, "madvise", GLIBC) is None
  assert hugepages.tunables_with_huge_pages(  # Already set: no second restart.
      {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", GLIBC) is None


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
  path = tmp_path / "enabled"
  path.write_text("always [madvise] never\n")
  assert hugepages.thp_mode(str(path)) == "madvise"
  assert hugepages.thp_mode(str(tmp_path / "missing")) == ""


@pytest.mark.skipif(hugepages.tunables_with_huge_pages(
    {}, hugepages.thp_mode(), platform.libc_ver()) is None,
    reason="this host's kernel/glibc need no restart (THP not 'madvise' or glibc < 2.35)")
def test_entry_point_restarts_itself_once_with_the_tunable():
  code = ("import os; from efficientnet_jax import hugepages; "
          "print('start', flush=True); hugepages.reexec_with_huge_pages(); "
          "print(os.environ.get('GLIBC_TUNABLES', '-'))")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hugepages.OPT_OUT_ENV)}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  assert out == ["start", "start", hugepages.TUNABLE]
  env[hugepages.OPT_OUT_ENV] = "0"
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  assert out == ["start", "-"]
