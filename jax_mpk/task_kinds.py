"""The LLM task kinds: what each reads and writes, in the terms the CUDA library implements.

Every operand is a byte range of a slot; dims hold the tile a task computes and the small
sizes of its problem; layouts that do not fit 12 int32 live in a descriptor (an int32 array
in the program's constants) passed as an operand. All arithmetic accumulates in float32.

ELEMENTWISE   operands: out, program, in_0..in_{n-1}
              dims: [first, count] output elements in row-major order of the output shape
              program (int32): [rank, n_inputs, n_instrs, out_dtype,
                                out_shape[rank], out_strides[rank],
                                per input: dtype, strides[rank],
                                per instr: opcode, dtype, a, b, c, imm]
              Instruction i sets register i; a, b, c name earlier registers. LOAD reads input
              imm at the element's index (strides in elements, 0 for broadcast dims); CONST's
              imm is the value's bits as int32 (float32 bits for float dtypes); IOTA yields
              the element's index along dim imm; INTEGER_POW raises a to the power imm;
              ROUND rounds halves away from zero (imm 0) or to even (imm 1). Float registers
              hold float32 whatever their dtype; only CONVERT and the store round narrower.
              The last register, cast to out_dtype, is stored at out_strides.
              rank | PROGRAM_DYNAMIC_ROW adds five words after out_dtype: [input j, elements
              per row, rows, rows written, wrap]: the output base moves by clamp(s, 0, rows -
              rows written) rows, s the int32 at input j's first element (plus rows if it is
              negative and wrap is 1): a cache append folded into the writer of its update
              (passes/cache_append.py), clamped as dynamic_update_slice clamps.
REDUCE        operands: out, in       in [outer, length, inner] contiguous, out [outer, inner]
              dims: [outer, length, inner, reducer, in_dtype, out_dtype, first, count]
              (first, count: output elements). ARGMAX/ARGMIN write int32 indices, first wins.
MATMUL        operands: out, descriptor, x, w[, residual][, bias][, scale | up][, extent]
              out[b, m, n] = sum_k x[b, m, k] * w[b, k, n] (+ residual[b, m, n]) (+ bias[n])
              dims: [b_first, b_count, n_first, n_count, k_first, k_count]
              descriptor (int32): [B, B1, M, N, K, x_dtype, w_dtype, out_dtype, flags,
                                   x_stride_b0, x_stride_b1, x_stride_m, x_stride_k,
                                   w_stride_b0, w_stride_b1, w_stride_k, w_stride_n,
                                   out_stride_b, out_stride_m, out_stride_n, extent_axis,
                                   norm_eps, norm_offset, norm_dtype, scale_dtype,
                                   prefetch_loads]
              Batch index b splits into (b // B1, b % B1) for the x and w strides.
              flags: 1 has residual (laid out like out), 2 has bias [N], 4 (MATMUL_NORM)
              RMS-normalizes x's rows first: x[m, k] / sqrt(sum over all K of x[m, k]^2 / K
              + norm_eps) * (norm_offset + scale[k]) in float32, rounded to norm_dtype
              (eps and offset as float32 bits; B is 1). 8 (MATMUL_GATE): x is a gate g and
              the matmul reads g * logistic(g) * up in float32, rounded to x's dtype (up laid
              out as x, of its dtype). A task flagged TASK_PREFETCH issues its first
              prefetch_loads weight loads a thread (at most 15) before its wait (speed
              only). 16 (MATMUL_TENSOR_CORES): bf16 or f16 x and w of one dtype, in tiles of
              16 to 128 columns, are multiplied on tensor cores (speed only: float32
              accumulation either way, in another order). 32 (MATMUL_ROUND_BF16), 64
              (MATMUL_ROUND_F16): the result, its epilogue added, rounds to bf16 (f16)
              before it is stored as out_dtype (a widening cast folded in:
              passes/patterns.fold_output_casts). A task with a partial k range
              (split-K) writes float32 partial sums for its k range.
              extent_axis 1 (M) or 2 (N): rows or columns at or past the int32 scalar extent
              are written as 0 without reading x or w there; 3 (K): the sum runs over
              k < extent only. Attention bounds its KV-cache matmuls so to the live cache.
GATHER_ROWS   operands: out, table, ids      table [rows, width], ids int32 [n], out [n, width]
              dims: [n, width, rows, dtype, mode, first, count]  (first, count: ids)
              mode bit 0: out-of-range ids fill the row with NaN (floats) or 0, else clamp;
              bit 1: a negative id first gets rows added (numpy indexing).
DYNAMIC_SLICE operands: out, src, one int32 scalar start per dim (rank <= 4)
              dims: [rank, src_shape[4], out_shape[4], wrap_mask, itemsize]
              out = src[start_d : start_d + out_shape_d], starts clamped into range; bit d of
              wrap_mask first adds src_shape_d to a negative start_d (numpy indexing).
DYNAMIC_UPDATE_SLICE  operands: dst, update, one int32 scalar start per dim
              dims: [rank, dst_shape[4], update_shape[4], wrap_mask, itemsize]
              dst[start : start + update_shape] = update in place, starts as above.
SEQUENCE      operands: descriptor, then each step's operands in step order
              dims: [first, count] rows
              descriptor (int32): [n_steps, per step: kind, num_operands, range_dim,
                                   units_per_row, dims[12]]
              Step s is a task of its kind (one of the five above) on its operands and dims,
              with dims[range_dim], dims[range_dim + 1] = first, count x units_per_row where
              range_dim >= 0 (else it runs whole). Steps run in order, a block barrier
              between them, so a step reads what earlier steps of its task wrote.
DECODE_ATTENTION  operands: out, descriptor, q, k, v, extent[, partials[, counters]]
                  [, new_k, new_v, cos, sin, pos[, q_scale, k_scale]]
              For each batch index b (split (b // B1, b % B1) for the q, k and v strides) and
              query row g < G: s_t = round(q[b, g, :] . k[b, t, :], scores_dtype) * scale for
              t < extent (int32 scalar), p = softmax(s), out[b, g, :] = sum_t p_t v[b, t, :].
              dims: [b_first, b_count, t_first, t_count, mode, split, operands after the
              first six to eight: 0, 5 (rope) or 7 (rope and norms)]
              descriptor (int32): [B, B1, G, T, D, Dv, q_dtype, k_dtype, v_dtype, out_dtype,
                                   scores_dtype, q_strides[4], k_strides[4], v_strides[4],
                                   out_strides[3], scale (float32 bits), splits]
              mode 0 (WHOLE): every t in the task's range, out written. mode 1 (PARTIAL): split
              `split`'s share of the live positions, [split * n, (split + 1) * n) below the
              extent for n = ceil(extent / splits) (t_first, t_count: its share of T, which
              bounds n and sizes the arena); its row max m[g], sum l[g] of exp(s - m) and
              acc[g, :] = sum exp(s - m) v go to partials record b * splits + split, float32
              [G] m, [G] l, [G, Dv] acc; with counters (uint64 task counters, one per b), it
              then adds 1 to counter b, and the split that brings it to splits x (iteration +
              1) merges b as MERGE does. mode 2 (MERGE): out from the `splits` records of each
              b (a split with no live position has m = -inf, l = 0).
              With the five rope operands (passes/rope_attention.py; not in MERGE), 12 more
              descriptor words: [pos wraps, q's rotated dtype, new_k, new_v and table
              dtypes, the tables' stride, new_k_strides[3], new_v_strides[3]] (strides of
              b // B1, b % B1, d). q is read unrotated: element d of a row becomes
              round(x_d c_j - x_{d+D/2} s_j) for d < D/2, round(x_d c_j + x_{d-D/2} s_j)
              above (j = d mod D/2, float32, each product and sum rounded, then q's rotated
              dtype). Row r = pos (clamped as DYNAMIC_UPDATE_SLICE clamps a start of one row,
              wrapping when told) of b's k gets new_k rotated so, and of v new_v, written
              by the task whose positions hold r (split 0 or the WHOLE task where none
              does) before it reads the cache. The descriptor is padded to 40 words (those
              the kernel stages). With the two norm operands after pos (q_scale, k_scale),
              7 words after the 40: [normed dtype, scales' dtype, n, eps, c (float32 bits),
              q_scale's and k_scale's strides along d]; each head row x of q and of new_k
              is first normed: x_d becomes round((x_d * inv) * (c + scale_d)) to the normed
              dtype, inv = 1 / sqrt(sum_d x_d^2 / n + eps) (float32, the sum in any order;
              each other step rounded as written).
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

import ml_dtypes
import numpy as np

from jax_mpk.program import TaskKind

__all__ = ["TaskKind", "DType", "Opcode", "Reducer", "dtype_code", "numpy_dtype", "is_float",
           "MAX_ELEMENTWISE_RANK", "MAX_ELEMENTWISE_INSTRS", "PROGRAM_DYNAMIC_ROW",
           "MAX_SLICE_RANK",
           "SEQUENCE_STEP_WORDS", "ATTENTION_WHOLE", "ATTENTION_PARTIAL", "ATTENTION_MERGE",
           "ElementwiseProgram", "Instr"]

MAX_ELEMENTWISE_RANK = 6
PROGRAM_DYNAMIC_ROW = 1 << 8  # ElementwiseProgram: the rank word's flag for a dynamic row
MAX_ELEMENTWISE_INSTRS = 64  # kMaxRegisters of kernels/tasks/elementwise.cuh
MAX_SLICE_RANK = 4
SEQUENCE_STEP_WORDS = 16  # kStepWords of kernels/tasks/sequence.cuh
ATTENTION_WHOLE, ATTENTION_PARTIAL, ATTENTION_MERGE = 0, 1, 2  # DECODE_ATTENTION modes
MATMUL_NORM = 4  # MATMUL flag: RMS-normalize x's rows first
MATMUL_GATE = 8  # MATMUL flag: x is silu(x) * up
MATMUL_TENSOR_CORES = 16  # MATMUL flag: 16-bit tiles of 16 to 128 columns go to tensor cores
MATMUL_ROUND_BF16 = 32  # MATMUL flag: the result rounds to bf16 before its store
MATMUL_ROUND_F16 = 64  # MATMUL flag: the result rounds to f16 before its store


class DType(enum.IntEnum):
    F32 = 0
    BF16 = 1
    F16 = 2
    I32 = 3
    U32 = 4
    BOOL = 5  # one byte, 0 or 1
    I8 = 6
    U8 = 7


_NUMPY = {
    DType.F32: np.dtype(np.float32),
    DType.BF16: np.dtype(ml_dtypes.bfloat16),
    DType.F16: np.dtype(np.float16),
    DType.I32: np.dtype(np.int32),
    DType.U32: np.dtype(np.uint32),
    DType.BOOL: np.dtype(np.bool_),
    DType.I8: np.dtype(np.int8),
    DType.U8: np.dtype(np.uint8),
}
_CODES = {v: k for k, v in _NUMPY.items()}
SUPPORTED_DTYPE_NAMES = ", ".join(d.name for d in _NUMPY.values())


def is_supported_dtype(dtype) -> bool:
    return np.dtype(dtype) in _CODES


def dtype_code(dtype) -> DType:
    code = _CODES.get(np.dtype(dtype))
    if code is None:
        raise TypeError(f"dtype {np.dtype(dtype).name} is not supported; supported: "
                        + SUPPORTED_DTYPE_NAMES)
    return code


def numpy_dtype(code: int) -> np.dtype:
    return _NUMPY[DType(code)]


def is_float(dtype) -> bool:
    return np.dtype(dtype).kind == "f" or np.dtype(dtype) == _NUMPY[DType.BF16]


class Reducer(enum.IntEnum):
    SUM = 0
    MAX = 1
    MIN = 2
    ARGMAX = 3
    ARGMIN = 4


class Opcode(enum.IntEnum):
    LOAD = 0
    CONST = 1
    IOTA = 2
    CONVERT = 3
    NEG = 4
    ABS = 5
    SIGN = 6
    EXP = 7
    EXP2 = 8
    LOG = 9
    LOG1P = 10
    EXPM1 = 11
    TANH = 12
    LOGISTIC = 13
    ERF = 14
    RSQRT = 15
    SQRT = 16
    SIN = 17
    COS = 18
    FLOOR = 19
    CEIL = 20
    NOT = 21
    INTEGER_POW = 22
    ADD = 23
    SUB = 24
    MUL = 25
    DIV = 26
    REM = 27
    POW = 28
    MAX = 29
    MIN = 30
    AND = 31
    OR = 32
    XOR = 33
    EQ = 34
    NE = 35
    LT = 36
    LE = 37
    GT = 38
    GE = 39
    SELECT = 40  # a ? c : b  (lax.select_n(a, b, c))
    CLAMP = 41  # min(max(b, a), c)  (lax.clamp(a, b, c))
    IS_FINITE = 42
    SQUARE = 43
    ROUND = 44  # imm 0: half away from zero; 1: half to even
    TAN = 45
    CBRT = 46
    ERFC = 47
    # Integer shifts as XLA's: by the dtype's width or more (or a negative amount), 0 for the
    # left and logical shifts, the sign for the arithmetic one, which takes an unsigned
    # value's top bit as its sign.
    SHIFT_LEFT = 48
    SHIFT_RIGHT_ARITHMETIC = 49
    SHIFT_RIGHT_LOGICAL = 50


SHIFTS = (Opcode.SHIFT_LEFT, Opcode.SHIFT_RIGHT_ARITHMETIC, Opcode.SHIFT_RIGHT_LOGICAL)
NUM_ARGS = {Opcode.LOAD: 0, Opcode.CONST: 0, Opcode.IOTA: 0, Opcode.SELECT: 3, Opcode.CLAMP: 3}
for _op in Opcode:
    if _op not in NUM_ARGS:
        NUM_ARGS[_op] = 2 if Opcode.ADD <= _op <= Opcode.GE or _op in SHIFTS else 1


class Instr(NamedTuple):
    """One SSA instruction of an elementwise program."""

    opcode: Opcode
    dtype: np.dtype
    args: tuple[int, ...] = ()
    imm: int = 0


def const_bits(value, dtype) -> int:
    """The int32 bit pattern CONST carries for value of dtype."""
    if is_float(dtype):
        return struct.unpack("<i", struct.pack("<f", float(value)))[0]
    return int(np.int64(value).astype(np.int32))


def const_value(bits: int, dtype) -> np.ndarray:
    if is_float(dtype):
        return np.array(struct.unpack("<f", struct.pack("<i", bits))[0], np.float32).astype(dtype)
    return np.array(bits, np.int64).astype(dtype)


def float32_input(instrs: list[Instr], r: int) -> int | None:
    """The input that register r reads as float32: the index of a float32 LOAD's input, or of
    the LOAD a CONVERT to float32 widens; else None."""
    ins = instrs[r]
    if ins.opcode == Opcode.CONVERT and ins.dtype == np.float32:
        ins = instrs[ins.args[0]]
    elif ins.dtype != np.float32:
        return None
    return ins.imm if ins.opcode == Opcode.LOAD else None


class ElementwiseProgram:
    """Instructions over n inputs computing one output element; see ELEMENTWISE above."""

    def __init__(self, instrs: list[Instr], num_inputs: int,
                 dynamic_row: tuple[int, int, int, int, int] | None = None):
        self.instrs = instrs
        self.num_inputs = num_inputs
        self.dynamic_row = dynamic_row  # (input, elements per row, rows, rows written, wrap)

    @property
    def out_dtype(self) -> np.dtype:
        return self.instrs[-1].dtype

    def encode(self, out_shape, out_strides, in_dtypes, in_strides) -> np.ndarray:
        rank = len(out_shape)
        flag = PROGRAM_DYNAMIC_ROW if self.dynamic_row else 0
        words = [rank | flag, self.num_inputs, len(self.instrs), dtype_code(self.out_dtype),
                 *(self.dynamic_row or ()), *out_shape, *out_strides]
        for dtype, strides in zip(in_dtypes, in_strides, strict=False):
            assert len(strides) == rank
            words += [dtype_code(dtype), *strides]
        for ins in self.instrs:
            args = list(ins.args) + [0] * (3 - len(ins.args))
            words += [int(ins.opcode), dtype_code(ins.dtype), *args, ins.imm]
        return np.array(words, np.int32)

    @staticmethod
    def decode(words: np.ndarray):
        rank, n_in, n_instr, out_dtype = (int(w) for w in words[:4])
        dynamic_row = tuple(int(w) for w in words[4:9]) if rank & PROGRAM_DYNAMIC_ROW else None
        rank &= PROGRAM_DYNAMIC_ROW - 1
        at = 9 if dynamic_row else 4
        out_shape = tuple(int(w) for w in words[at:at + rank])
        out_strides = tuple(int(w) for w in words[at + rank:at + 2 * rank])
        at += 2 * rank
        inputs = []
        for _ in range(n_in):
            inputs.append((numpy_dtype(words[at]), tuple(int(w) for w in
                                                         words[at + 1:at + 1 + rank])))
            at += 1 + rank
        instrs = []
        for _ in range(n_instr):
            op, dt, a, b, c, imm = (int(w) for w in words[at:at + 6])
            nargs = NUM_ARGS[Opcode(op)]
            instrs.append(Instr(Opcode(op), numpy_dtype(dt), (a, b, c)[:nargs], imm))
            at += 6
        return out_shape, out_strides, numpy_dtype(out_dtype), inputs, instrs, dynamic_row
