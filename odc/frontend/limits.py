"""Compile-time limits of the front end, in one place.

They keep `odc check` fast (linear in the size of the file) and refuse, at the line that causes
it, a program that would take minutes to compile or more memory than a machine has: a number
with thousands of digits, a def that calls the next one twice, 25 deep (2^25 inlined calls), a
4 GB parameter. Each limit is far above what an ordinary network needs (VGG, ResNet or
MobileNet on 224x224 images). The limit on the memory plan of a compiled step is
`odc.ir.passes.plan_memory.MAX_ARENA_BYTES`.
"""

MAX_NESTING = 64
"""Levels of nesting in one expression: parentheses, brackets, calls, unary minus and operators
(``a + b + c`` nests two levels). Python's own parser stops at 200 parentheses."""

MAX_DEF_DEPTH = 16
"""Def calls inside def calls: a def may call a def that calls a def ... this many deep."""

MAX_INLINED_CALLS = 20_000
"""Def calls inlined into one model, counting every call of a def inside a def at each of its
calls (a def calling another twice, k deep, inlines 2^k calls)."""

MAX_NODES = 100_000
"""Nodes of one model's graph (a 10,000-layer network has about 40,000)."""

MAX_ELEMENTS = 2 ** 28
"""Elements of one tensor with known sizes, such as a parameter (1 GiB of f32; VGG's largest
weight, 25088 x 4096, has 102,760,448)."""

MAX_SAMPLE_ELEMENTS = 2 ** 22
"""Elements of one tensor per batch item, for a tensor whose sizes include a symbol such as the
batch N (16 MiB of f32 per image: 64 channels of 256 x 256; VGG on 224x224 images needs
3,211,264)."""

MAX_PARAMETERS = 2 ** 29
"""Elements of all parameters of a model together (2 GiB of f32; VGG-16 has 138 million)."""

RECURSION_LIMIT = 1000 + MAX_DEF_DEPTH * (10 + 6 * MAX_NESTING)
"""The Python recursion limit while a file is checked: parsing and lowering recurse over
expressions and inlined defs, and the limits above bound how deep, so that a deep program is a
CompileError at its place, never a RecursionError."""

