"""The megakernel's ptxas report: no spills, within the registers its launch bounds allow."""

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_megakernel_compiles_for_sm90a_without_spills(tmp_path):
    nvcc = shutil.which("nvcc")
    assert nvcc, "nvcc is not on PATH: the package cannot have been built here"
    result = subprocess.run(
        [nvcc, "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", "-Xptxas=-v",
         "-Xptxas=--warn-on-spills", "-I", str(ROOT), "-c",
         str(ROOT / "kernels" / "runtime" / "megakernel.cu"), "-o", str(tmp_path / "mk.o")],
        capture_output=True, text=True, timeout=900)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    kernel = report[report.index("_ZN3mpk10megakernel"):]
    # The kernel and the functions it calls (the task dispatcher is not inlined).
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    registers = re.search(r"Used (\d+) registers", kernel)
    assert spills and registers, report
    assert all(s == ("0", "0") for s in spills), report
    # __launch_bounds__(256, 1) allows 255 registers a thread.
    assert int(registers.group(1)) <= 255
    print(registers.group(0), "| spills:", spills)
