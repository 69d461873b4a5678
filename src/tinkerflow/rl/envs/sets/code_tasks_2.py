# ruff: noqa: E501  (data: one task prompt per line reads best)
"""Code tasks 15-29 of :data:`tinkerflow.rl.envs.sets.code_tasks.CODE_TASKS` (written for this project,
under its license; see that module)."""

from __future__ import annotations

from typing import Final

__all__ = ["TASKS"]

TASKS: Final[tuple[tuple[str, str, str, str], ...]] = (
    (
        "binary_search",
        "Write `binary_search(items: list[int], target: int) -> int` returning an index of `target` in the sorted list `items`, or -1 when it is absent.",
        """\
def binary_search(items, target):
    lo, hi = 0, len(items) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if items[mid] == target:
            return mid
        if items[mid] < target:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1
""",
        """\
assert binary_search([], 3) == -1
assert binary_search([1, 3, 5, 7], 7) == 3
assert binary_search([1, 3, 5, 7], 1) == 0
assert binary_search([1, 3, 5, 7], 4) == -1
data = list(range(0, 1000, 3))
assert all(data[binary_search(data, x)] == x for x in data)
""",
    ),
    (
        "rotate_right",
        "Write `rotate_right(nums: list[int], k: int) -> list[int]` returning `nums` rotated right by `k` places (`k` may exceed the length).",
        """\
def rotate_right(nums, k):
    if not nums:
        return []
    k %= len(nums)
    return nums[-k:] + nums[:-k] if k else list(nums)
""",
        """\
assert rotate_right([1, 2, 3, 4, 5], 2) == [4, 5, 1, 2, 3]
assert rotate_right([1, 2, 3], 3) == [1, 2, 3]
assert rotate_right([1, 2, 3], 4) == [3, 1, 2]
assert rotate_right([], 5) == []
""",
    ),
    (
        "word_count",
        "Write `word_count(text: str) -> dict[str, int]` counting the words of `text`, lowercased, where a word is a maximal run of letters.",
        """\
import re
def word_count(text):
    counts = {}
    for word in re.findall(r"[A-Za-z]+", text):
        word = word.lower()
        counts[word] = counts.get(word, 0) + 1
    return counts
""",
        """\
assert word_count("") == {}
assert word_count("The cat and the hat.") == {"the": 2, "cat": 1, "and": 1, "hat": 1}
assert word_count("it's 2 o'clock") == {"it": 1, "s": 1, "o": 1, "clock": 1}
""",
    ),
    (
        "max_subarray",
        "Write `max_subarray(nums: list[int]) -> int` returning the largest sum of a non-empty contiguous sublist of the non-empty list `nums`.",
        """\
def max_subarray(nums):
    best = current = nums[0]
    for x in nums[1:]:
        current = max(x, current + x)
        best = max(best, current)
    return best
""",
        """\
assert max_subarray([-2, 1, -3, 4, -1, 2, 1, -5, 4]) == 6
assert max_subarray([-3, -1, -2]) == -1
assert max_subarray([5]) == 5
assert max_subarray([1, 2, 3]) == 6
""",
    ),
    (
        "two_sum",
        "Write `two_sum(nums: list[int], target: int) -> tuple[int, int] | None` returning indices (i, j) with i < j and nums[i] + nums[j] == target, the smallest j first and then the smallest i; None when there are none.",
        """\
def two_sum(nums, target):
    for j in range(len(nums)):
        for i in range(j):
            if nums[i] + nums[j] == target:
                return (i, j)
    return None
""",
        """\
assert two_sum([2, 7, 11, 15], 9) == (0, 1)
assert two_sum([3, 2, 4], 6) == (1, 2)
assert two_sum([1, 2], 7) is None
assert two_sum([3, 3, 3], 6) == (0, 1)
""",
    ),
    (
        "roman_to_int",
        "Write `roman_to_int(s: str) -> int` converting a valid Roman numeral (I, V, X, L, C, D, M, with subtractive pairs) to an integer.",
        """\
def roman_to_int(s):
    values = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
    total = 0
    for i, c in enumerate(s):
        v = values[c]
        if i + 1 < len(s) and values[s[i + 1]] > v:
            total -= v
        else:
            total += v
    return total
""",
        """\
assert roman_to_int("III") == 3
assert roman_to_int("IX") == 9
assert roman_to_int("LVIII") == 58
assert roman_to_int("MCMXCIV") == 1994
""",
    ),
    (
        "int_to_roman",
        "Write `int_to_roman(n: int) -> str` converting an integer from 1 to 3999 to a Roman numeral (subtractive pairs such as IV and CM).",
        """\
def int_to_roman(n):
    pairs = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"), (40, "XL"),
             (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]
    out = []
    for value, letters in pairs:
        while n >= value:
            out.append(letters)
            n -= value
    return "".join(out)
""",
        """\
assert int_to_roman(3) == "III"
assert int_to_roman(4) == "IV"
assert int_to_roman(58) == "LVIII"
assert int_to_roman(1994) == "MCMXCIV"
assert int_to_roman(3999) == "MMMCMXCIX"
""",
    ),
    (
        "balanced",
        "Write `balanced(s: str) -> bool`: whether the brackets (), [] and {} in `s` are balanced and properly nested (other characters are ignored).",
        """\
def balanced(s):
    pairs = {")": "(", "]": "[", "}": "{"}
    stack = []
    for c in s:
        if c in "([{":
            stack.append(c)
        elif c in pairs:
            if not stack or stack.pop() != pairs[c]:
                return False
    return not stack
""",
        """\
assert balanced("")
assert balanced("([]{})")
assert balanced("a(b[c]d)e")
assert not balanced("(]")
assert not balanced("((")
assert not balanced("())")
""",
    ),
    (
        "transpose",
        "Write `transpose(matrix: list[list[int]]) -> list[list[int]]` returning the transpose of a rectangular matrix (an empty matrix gives []).",
        """\
def transpose(matrix):
    return [list(row) for row in zip(*matrix)]
""",
        """\
assert transpose([]) == []
assert transpose([[1, 2, 3]]) == [[1], [2], [3]]
assert transpose([[1, 2], [3, 4], [5, 6]]) == [[1, 3, 5], [2, 4, 6]]
""",
    ),
    (
        "chunk",
        "Write `chunk(items: list, size: int) -> list[list]` splitting `items` into consecutive pieces of `size` elements (the last may be shorter).",
        """\
def chunk(items, size):
    return [items[i : i + size] for i in range(0, len(items), size)]
""",
        """\
assert chunk([], 3) == []
assert chunk([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
assert chunk([1, 2, 3], 5) == [[1, 2, 3]]
""",
    ),
    (
        "unique_in_order",
        "Write `unique_in_order(items: list) -> list` removing consecutive duplicates and keeping the order, e.g. [1, 1, 2, 1] -> [1, 2, 1].",
        """\
def unique_in_order(items):
    out = []
    for item in items:
        if not out or out[-1] != item:
            out.append(item)
    return out
""",
        """\
assert unique_in_order([]) == []
assert unique_in_order([1, 1, 2, 1]) == [1, 2, 1]
assert unique_in_order(list("AAAABBBCCDAABBB")) == list("ABCDAB")
""",
    ),
    (
        "fibonacci",
        "Write `fibonacci(n: int) -> int` returning the n-th Fibonacci number with fibonacci(0) == 0 and fibonacci(1) == 1 (it must be fast for n up to 1000).",
        """\
def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
""",
        """\
assert fibonacci(0) == 0
assert fibonacci(1) == 1
assert fibonacci(10) == 55
assert fibonacci(90) == 2880067194370816120
assert fibonacci(1000) % 1000 == 875
""",
    ),
    (
        "to_binary",
        "Write `to_binary(n: int) -> str` returning the binary digits of the non-negative integer `n` without a prefix ('0' for zero), without using bin() or format().",
        """\
def to_binary(n):
    if n == 0:
        return "0"
    digits = []
    while n:
        digits.append(str(n % 2))
        n //= 2
    return "".join(reversed(digits))
""",
        """\
assert to_binary(0) == "0"
assert to_binary(5) == "101"
assert to_binary(255) == "11111111"
assert all(to_binary(k) == bin(k)[2:] for k in range(300))
""",
    ),
    (
        "common_prefix",
        "Write `common_prefix(words: list[str]) -> str` returning the longest prefix shared by every word ('' for an empty list).",
        """\
def common_prefix(words):
    if not words:
        return ""
    prefix = words[0]
    for word in words[1:]:
        while not word.startswith(prefix):
            prefix = prefix[:-1]
    return prefix
""",
        """\
assert common_prefix([]) == ""
assert common_prefix(["flower", "flow", "flight"]) == "fl"
assert common_prefix(["dog", "racecar"]) == ""
assert common_prefix(["same"]) == "same"
""",
    ),
    (
        "matmul",
        "Write `matmul(a: list[list[int]], b: list[list[int]]) -> list[list[int]]` returning the matrix product of `a` (n x m) and `b` (m x p).",
        """\
def matmul(a, b):
    return [[sum(a[i][k] * b[k][j] for k in range(len(b))) for j in range(len(b[0]))] for i in range(len(a))]
""",
        """\
assert matmul([[1, 2], [3, 4]], [[5, 6], [7, 8]]) == [[19, 22], [43, 50]]
assert matmul([[1, 0, 2]], [[1], [2], [3]]) == [[7]]
assert matmul([[2]], [[3]]) == [[6]]
""",
    ),
)
