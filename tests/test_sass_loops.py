"""benchmarks/sass_loops.py reads machine code that nvcc and a GPU-less
machine can produce but no test here does (that takes minutes): its two
counts are checked on small hand-written loops in nvdisasm's format instead,
each with a path the count must take and paths it must not."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import sass_loops  # noqa: E402


def sass(*lines):
    """nvdisasm's layout: labels alone on a line, instructions after an address comment."""
    out, address = [], 0
    for line in lines:
        if line.endswith(":"):
            out.append(line)
        else:
            out.append(f"        /*{address:04x}*/                   {line} ;")
            address += 16
    return "\n".join(out)


# One step of a tensor-core loop: a chunk copied by cp.async (LDGSTS) where
# it can be, else loaded into registers (LDG) and stored after the products
# (STS); a branch that skips the loads in the last step; two mma; the
# closing branch.
STEP = sass(
    "IMAD.MOV.U32 R0, RZ, RZ, RZ",  # before the loop: not counted
    ".L_x_0:",
    "ISETP.GE.AND P0, PT, R1, R2, PT",
    "@P0 BRA `(.L_x_2)",  # the last step: no loads
    "ISETP.NE.AND P1, PT, R3, RZ, PT",
    "@P1 BRA `(.L_x_1)",  # the chunk goes element by element
    "IADD3 R4, R5, R6, RZ",
    "LDGSTS.E.BYPASS.128 [R7], desc[UR4][R8.64]",
    "BRA `(.L_x_2)",
    ".L_x_1:",
    "LDG.E.U16 R9, desc[UR4][R8.64]",
    "LDG.E.U16 R10, desc[UR4][R8.64+0x2]",
    ".L_x_2:",
    "BAR.SYNC.DEFER_BLOCKING 0x0",
    "LDSM.16.M88.4 R12, [R11]",
    "HMMA.16816.F32 R16, R12, R20, R16",
    "HMMA.16816.F32 R24, R12, R22, R24",
    "@!P1 BRA `(.L_x_3)",  # no chunk in registers
    "STS [R7], R9",
    ".L_x_3:",
    "IADD3 R1, R1, 0x1, RZ",
    "ISETP.LT.AND P2, PT, R1, R2, PT",
    "@P2 BRA `(.L_x_0)",
    "EXIT",
)


def test_the_main_loop_is_the_largest_loop_with_multiply_adds():
    ops = sass_loops.main_loop(STEP)
    assert ops["HMMA.16816.F32"] == 2 and ops["LDGSTS.E.BYPASS.128"] == 1 and ops["LDG.E.U16"] == 2
    assert "IMAD.MOV.U32" not in ops and "EXIT" not in ops
    assert sum(ops.values()) == 18


def test_the_copy_step_follows_the_path_where_the_chunk_goes_by_cp_async():
    # ISETP, BRA, ISETP, BRA, IADD3, LDGSTS, BRA, BAR, LDSM, HMMA, HMMA, BRA,
    # IADD3, ISETP, BRA: not the shorter path that skips the loads (it starts
    # no copy), nor the one through the element loads and their store.
    assert sass_loops.copy_step(STEP) == 15


def test_a_loop_without_copies_has_no_copy_step():
    no_copies = STEP.replace("LDGSTS.E.BYPASS.128 [R7], desc[UR4][R8.64]", "LDG.E.128 R12, desc[UR4][R8.64]")
    assert sass_loops.copy_step(no_copies) is None
    assert sass_loops.copy_step(sass("IADD3 R1, R2, R3, RZ", "EXIT")) is None


def test_of_two_paths_that_copy_alike_the_count_takes_the_shorter():
    # A branch with a predicate operand (`BRA P1, target`, taken where P1
    # holds) is conditional, guarded or not: here it falls through to a copy
    # two instructions shorter than the one it leads to (BRA, LDGSTS, BRA,
    # HMMA, and the closing BRA).
    loop = sass(
        ".L_x_0:",
        "BRA P1, `(.L_x_1)",
        "LDGSTS.E.BYPASS.128 [R7], desc[UR4][R8.64]",
        "BRA `(.L_x_2)",
        ".L_x_1:",
        "SEL R8, R8, RZ, P0",
        "SEL R9, R9, RZ, P0",
        "LDGSTS.E.BYPASS.128 [R7], desc[UR4][R8.64], !P0",
        ".L_x_2:",
        "HMMA.16816.F32 R16, R12, R20, R16",
        "@P2 BRA `(.L_x_0)",
    )
    assert sass_loops.copy_step(loop) == 5


def test_a_path_that_loads_into_registers_is_not_the_copy_step():
    # Both paths start two copies; the shorter one also loads a chunk
    # element by element, so the count takes the longer.
    loop = sass(
        ".L_x_0:",
        "@P1 BRA `(.L_x_1)",
        "LDGSTS.E.BYPASS.128 [R7], desc[UR4][R8.64]",
        "LDGSTS.E.BYPASS.128 [R7+0x100], desc[UR4][R10.64]",
        "LDG.E.U16 R9, desc[UR4][R12.64]",
        "BRA `(.L_x_2)",
        ".L_x_1:",
        "SEL R8, R8, RZ, P0",
        "SEL R9, R9, RZ, P0",
        "IADD3 R10, R10, 0x10, RZ",
        "LDGSTS.E.BYPASS.128 [R7], desc[UR4][R8.64], !P0",
        "LDGSTS.E.BYPASS.128 [R7+0x100], desc[UR4][R10.64]",
        ".L_x_2:",
        "HMMA.16816.F32 R16, R12, R20, R16",
        "@P2 BRA `(.L_x_0)",
    )
    assert sass_loops.copy_step(loop) == 8
