# ruff: noqa: E501  (data: one task prompt per line reads best)
"""Code tasks 0-14 of :data:`tinkerflow.rl.envs.sets.code_tasks.CODE_TASKS` (written for this project,
under its license; see that module)."""

from __future__ import annotations

from typing import Final

__all__ = ["TASKS"]

TASKS: Final[tuple[tuple[str, str, str, str], ...]] = (
    (
        "digit_sum",
        "Write `digit_sum(n: int) -> int` returning the sum of the decimal digits of the non-negative integer `n`.",
        """\
def digit_sum(n):
    return sum(int(c) for c in str(n))
""",
        """\
assert digit_sum(0) == 0
assert digit_sum(7) == 7
assert digit_sum(1234) == 10
assert digit_sum(99999) == 45
""",
    ),
    (
        "is_palindrome",
        "Write `is_palindrome(s: str) -> bool`: whether `s` reads the same backwards, ignoring case and every character that is not a letter or digit.",
        """\
def is_palindrome(s):
    kept = [c.lower() for c in s if c.isalnum()]
    return kept == kept[::-1]
""",
        """\
assert is_palindrome("A man, a plan, a canal: Panama")
assert not is_palindrome("hello")
assert is_palindrome("")
assert is_palindrome("No 'x' in Nixon")
assert not is_palindrome("ab1")
""",
    ),
    (
        "fizzbuzz",
        "Write `fizzbuzz(n: int) -> list[str]` returning the strings for 1..n: 'Fizz' for multiples of 3, 'Buzz' for multiples of 5, 'FizzBuzz' for multiples of both, else the number.",
        """\
def fizzbuzz(n):
    out = []
    for i in range(1, n + 1):
        out.append("FizzBuzz" if i % 15 == 0 else "Fizz" if i % 3 == 0 else "Buzz" if i % 5 == 0 else str(i))
    return out
""",
        """\
assert fizzbuzz(0) == []
assert fizzbuzz(5) == ["1", "2", "Fizz", "4", "Buzz"]
assert fizzbuzz(15)[-1] == "FizzBuzz"
assert len(fizzbuzz(30)) == 30
""",
    ),
    (
        "count_vowels",
        "Write `count_vowels(s: str) -> int` counting the vowels a, e, i, o, u in `s`, in either case.",
        """\
def count_vowels(s):
    return sum(c in "aeiouAEIOU" for c in s)
""",
        """\
assert count_vowels("") == 0
assert count_vowels("Hello World") == 3
assert count_vowels("AEIOUxyz") == 5
assert count_vowels("rhythm") == 0
""",
    ),
    (
        "reverse_words",
        "Write `reverse_words(s: str) -> str` returning the words of `s` (separated by whitespace) in reverse order, joined by single spaces.",
        """\
def reverse_words(s):
    return " ".join(reversed(s.split()))
""",
        """\
assert reverse_words("the sky is blue") == "blue is sky the"
assert reverse_words("  hello   world ") == "world hello"
assert reverse_words("") == ""
assert reverse_words("one") == "one"
""",
    ),
    (
        "second_largest",
        "Write `second_largest(nums: list[int]) -> int | None` returning the second largest distinct value, or None when there are fewer than two distinct values.",
        """\
def second_largest(nums):
    values = sorted(set(nums))
    return values[-2] if len(values) >= 2 else None
""",
        """\
assert second_largest([3, 1, 4, 1, 5]) == 4
assert second_largest([2, 2, 2]) is None
assert second_largest([]) is None
assert second_largest([-1, -5]) == -5
assert second_largest([7, 7, 6]) == 6
""",
    ),
    (
        "flatten",
        "Write `flatten(items: list) -> list` returning the non-list elements of an arbitrarily nested list, in order.",
        """\
def flatten(items):
    out = []
    for item in items:
        if isinstance(item, list):
            out.extend(flatten(item))
        else:
            out.append(item)
    return out
""",
        """\
assert flatten([]) == []
assert flatten([1, [2, [3, [4]], 5]]) == [1, 2, 3, 4, 5]
assert flatten([[[]], "a", ["b"]]) == ["a", "b"]
""",
    ),
    (
        "gcd",
        "Write `gcd(a: int, b: int) -> int` returning the greatest common divisor of two non-negative integers (gcd(0, 0) is 0).",
        """\
def gcd(a, b):
    while b:
        a, b = b, a % b
    return a
""",
        """\
assert gcd(12, 18) == 6
assert gcd(17, 5) == 1
assert gcd(0, 9) == 9
assert gcd(0, 0) == 0
assert gcd(270, 192) == 6
""",
    ),
    (
        "is_prime",
        "Write `is_prime(n: int) -> bool`: whether the integer `n` is prime (numbers below 2 are not).",
        """\
def is_prime(n):
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True
""",
        """\
assert not is_prime(-7)
assert not is_prime(1)
assert is_prime(2)
assert is_prime(97)
assert not is_prime(91)
assert is_prime(7919)
""",
    ),
    (
        "primes_up_to",
        "Write `primes_up_to(n: int) -> list[int]` returning every prime <= n in increasing order.",
        """\
def primes_up_to(n):
    if n < 2:
        return []
    sieve = [True] * (n + 1)
    sieve[0] = sieve[1] = False
    for i in range(2, int(n ** 0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = [False] * len(sieve[i * i :: i])
    return [i for i, is_p in enumerate(sieve) if is_p]
""",
        """\
assert primes_up_to(1) == []
assert primes_up_to(2) == [2]
assert primes_up_to(30) == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
assert len(primes_up_to(1000)) == 168
""",
    ),
    (
        "rle_encode",
        "Write `rle_encode(s: str) -> str` run-length encoding `s` as each character followed by its run length, e.g. 'aaabcc' -> 'a3b1c2'.",
        """\
def rle_encode(s):
    out = []
    i = 0
    while i < len(s):
        j = i
        while j < len(s) and s[j] == s[i]:
            j += 1
        out.append(f"{s[i]}{j - i}")
        i = j
    return "".join(out)
""",
        """\
assert rle_encode("") == ""
assert rle_encode("aaabcc") == "a3b1c2"
assert rle_encode("abc") == "a1b1c1"
assert rle_encode("zzzzzzzzzzzz") == "z12"
""",
    ),
    (
        "rle_decode",
        "Write `rle_decode(s: str) -> str` decoding a run-length encoding made of letters each followed by a decimal count, e.g. 'a3b1c12' -> 'aaab' followed by twelve 'c'.",
        """\
def rle_decode(s):
    out = []
    i = 0
    while i < len(s):
        ch = s[i]
        j = i + 1
        while j < len(s) and s[j].isdigit():
            j += 1
        out.append(ch * int(s[i + 1 : j]))
        i = j
    return "".join(out)
""",
        """\
assert rle_decode("") == ""
assert rle_decode("a3b1c2") == "aaabcc"
assert rle_decode("x12") == "x" * 12
""",
    ),
    (
        "caesar",
        "Write `caesar(s: str, k: int) -> str` shifting every ASCII letter of `s` by `k` places in the alphabet (wrapping around, keeping case; `k` may be negative or large); other characters stay.",
        """\
def caesar(s, k):
    out = []
    for c in s:
        if "a" <= c <= "z":
            out.append(chr((ord(c) - 97 + k) % 26 + 97))
        elif "A" <= c <= "Z":
            out.append(chr((ord(c) - 65 + k) % 26 + 65))
        else:
            out.append(c)
    return "".join(out)
""",
        """\
assert caesar("abc", 1) == "bcd"
assert caesar("xyz", 3) == "abc"
assert caesar("Hello, World!", 13) == "Uryyb, Jbeyq!"
assert caesar("abc", -1) == "zab"
assert caesar("abc", 52) == "abc"
""",
    ),
    (
        "are_anagrams",
        "Write `are_anagrams(a: str, b: str) -> bool`: whether `a` and `b` use the same letters the same number of times, ignoring case and spaces.",
        """\
def are_anagrams(a, b):
    clean = lambda s: sorted(s.replace(" ", "").lower())
    return clean(a) == clean(b)
""",
        """\
assert are_anagrams("listen", "silent")
assert are_anagrams("Dormitory", "dirty room")
assert not are_anagrams("abc", "abd")
assert not are_anagrams("aab", "ab")
""",
    ),
    (
        "merge_sorted",
        "Write `merge_sorted(a: list[int], b: list[int]) -> list[int]` merging two sorted lists into one sorted list.",
        """\
def merge_sorted(a, b):
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            out.append(a[i]); i += 1
        else:
            out.append(b[j]); j += 1
    return out + a[i:] + b[j:]
""",
        """\
assert merge_sorted([], []) == []
assert merge_sorted([1, 4, 9], [2, 3, 10]) == [1, 2, 3, 4, 9, 10]
assert merge_sorted([1, 1], [1]) == [1, 1, 1]
assert merge_sorted([5], []) == [5]
""",
    ),
)
