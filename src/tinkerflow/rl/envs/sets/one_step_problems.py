# ruff: noqa: E501  (data: one problem per line reads best)
"""60 one-step word problems for the calculator-tool environment (:mod:`tinkerflow.rl.envs.tool_use`,
``problem_set="one_step"``): an easier tier than :mod:`~tinkerflow.rl.envs.sets.word_problems`.

Written for this project (tinkerflow), under the project's license; no outside source. Each problem takes a
single operation on numbers of two to five digits, large enough that a small model gains from the calculator,
written without thousands separators (so that they can be copied into a calculator expression as they are).
Each entry is ``(question, expression, answer)``: the expression is the one calculator call that solves it and
the answer its exact value (the tests check each one with the calculator). Problems 0-47 are the training split,
48-59 the held-out split.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ONE_STEP_PROBLEMS"]

ONE_STEP_PROBLEMS: Final[tuple[tuple[str, str, str], ...]] = (
    (
        "A farmer picks 356 apples on Monday and 478 on Tuesday. How many apples does he pick in total?",
        "356 + 478",
        "834",
    ),
    ("A box holds 24 cans. How many cans are in 37 boxes?", "24 * 37", "888"),
    ("A library had 1245 books and gave away 387. How many books are left?", "1245 - 387", "858"),
    ("A bus carries 48 people on each trip. How many people does it carry in 26 trips?", "48 * 26", "1248"),
    ("864 stickers are shared equally among 18 children. How many stickers does each child get?", "864 / 18", "48"),
    (
        "A shop sold 629 shirts in May and 574 in June. How many shirts did it sell in the two months?",
        "629 + 574",
        "1203",
    ),
    (
        "A road is 2350 meters long. Workers have paved 1876 meters. How many meters are left to pave?",
        "2350 - 1876",
        "474",
    ),
    ("A theater has 35 rows of 42 seats. How many seats does it have?", "35 * 42", "1470"),
    ("A baker makes 1512 cookies and packs them in bags of 36. How many bags does she fill?", "1512 / 36", "42"),
    ("Tom has 738 marbles and wins 295 more. How many marbles does he have now?", "738 + 295", "1033"),
    ("A tank holds 5000 liters and 2765 liters have been used. How many liters remain?", "5000 - 2765", "2235"),
    ("Each crate holds 64 eggs. How many eggs are in 19 crates?", "64 * 19", "1216"),
    (
        "A class of 27 students collects 1728 cans, the same number each. How many cans does each student collect?",
        "1728 / 27",
        "64",
    ),
    ("A town has 4382 adults and 2947 children. How many people live in the town?", "4382 + 2947", "7329"),
    (
        "A plane flies 3120 kilometers and then 1985 kilometers more. How far does it fly in total, in kilometers?",
        "3120 + 1985",
        "5105",
    ),
    ("A factory makes 125 chairs a day. How many chairs does it make in 48 days?", "125 * 48", "6000"),
    ("A ship carries 9000 boxes and unloads 3478. How many boxes are still on the ship?", "9000 - 3478", "5522"),
    ("2496 pencils are packed into boxes of 48. How many boxes are needed?", "2496 / 48", "52"),
    ("A runner trains 17 kilometers a day for 23 days. How many kilometers does she run?", "17 * 23", "391"),
    (
        "A zoo had 1064 visitors on Saturday and 1389 on Sunday. How many visitors came that weekend?",
        "1064 + 1389",
        "2453",
    ),
    (
        "Sam saved 2150 dollars and spent 1468 dollars on a bike. How many dollars does he have left?",
        "2150 - 1468",
        "682",
    ),
    ("A hotel has 28 floors with 36 rooms each. How many rooms does it have?", "28 * 36", "1008"),
    ("A farmer has 1155 eggs and packs them in cartons of 15. How many cartons does he fill?", "1155 / 15", "77"),
    (
        "A printer prints 845 pages in the morning and 967 in the afternoon. How many pages does it print?",
        "845 + 967",
        "1812",
    ),
    ("A school has 1320 students. 586 of them are boys. How many are girls?", "1320 - 586", "734"),
    ("A garden has 43 rows of 27 tulips. How many tulips are there?", "43 * 27", "1161"),
    (
        "A rope 1344 centimeters long is cut into 32 equal pieces. How long is each piece, in centimeters?",
        "1344 / 32",
        "42",
    ),
    ("A store had 2764 toys and received 1859 more. How many toys does it have now?", "2764 + 1859", "4623"),
    (
        "A mountain is 4810 meters high. A climber is at 2975 meters. How many meters are left to the top?",
        "4810 - 2975",
        "1835",
    ),
    ("A movie ticket costs 14 dollars. How many dollars do 265 tickets cost?", "14 * 265", "3710"),
    (
        "A charity splits 7650 dollars equally among 25 families. How many dollars does each family get?",
        "7650 / 25",
        "306",
    ),
    (
        "A city planted 3486 trees last year and 4129 this year. How many trees did it plant in the two years?",
        "3486 + 4129",
        "7615",
    ),
    (
        "A car has driven 12400 kilometers. Another car has driven 8735. How many more kilometers has the first car driven?",
        "12400 - 8735",
        "3665",
    ),
    ("A pack has 52 cards. How many cards are in 38 packs?", "52 * 38", "1976"),
    ("A truck carries 1890 kilograms in 45 equal sacks. How many kilograms is each sack?", "1890 / 45", "42"),
    ("A museum has 6275 paintings and buys 948 more. How many paintings does it have?", "6275 + 948", "7223"),
    (
        "A pool holds 7200 liters and has 3875 liters in it. How many more liters are needed to fill it?",
        "7200 - 3875",
        "3325",
    ),
    ("Each bag has 75 beads. How many beads are in 64 bags?", "75 * 64", "4800"),
    (
        "A club of 16 members raises 2928 dollars, the same amount each. How many dollars does each member raise?",
        "2928 / 16",
        "183",
    ),
    ("A farm has 1587 sheep and 2436 cows. How many animals is that?", "1587 + 2436", "4023"),
    ("A company earned 15000 dollars and spent 9284 dollars. How many dollars are left?", "15000 - 9284", "5716"),
    ("A wall has 57 rows of 34 bricks. How many bricks are in the wall?", "57 * 34", "1938"),
    ("A worker packs 3276 bottles into boxes of 12. How many boxes does he fill?", "3276 / 12", "273"),
    (
        "A website had 5748 visits on Monday and 6395 on Tuesday. How many visits is that in total?",
        "5748 + 6395",
        "12143",
    ),
    ("A forest had 8500 trees. 2693 were cut down. How many trees are left?", "8500 - 2693", "5807"),
    ("A stadium has 46 sections of 225 seats. How many seats does it have?", "46 * 225", "10350"),
    (
        "A baker uses 2160 grams of flour for 24 loaves, the same for each. How many grams are in one loaf?",
        "2160 / 24",
        "90",
    ),
    ("A fruit stand sold 1274 oranges and 1968 bananas. How many fruits did it sell?", "1274 + 1968", "3242"),
    # held out: 48-59
    ("A school bought 487 red pens and 658 blue pens. How many pens did it buy?", "487 + 658", "1145"),
    ("A box holds 36 crayons. How many crayons are in 47 boxes?", "36 * 47", "1692"),
    (
        "A river is 3450 kilometers long. A boat has traveled 1785 kilometers. How many kilometers are left?",
        "3450 - 1785",
        "1665",
    ),
    ("1632 chairs are set in 48 equal rows. How many chairs are in each row?", "1632 / 48", "34"),
    ("A shop sold 2389 hats in spring and 1746 in summer. How many hats did it sell?", "2389 + 1746", "4135"),
    ("A farmer plants 29 rows of 56 corn plants. How many plants is that?", "29 * 56", "1624"),
    (
        "A family drove 6000 kilometers on a trip. They have driven 4318 so far. How many kilometers are left?",
        "6000 - 4318",
        "1682",
    ),
    ("A team of 14 people shares 2072 dollars equally. How many dollars does each person get?", "2072 / 14", "148"),
    ("A city library lends 1856 books in June and 2475 in July. How many books does it lend?", "1856 + 2475", "4331"),
    ("Each page of an album holds 18 photos. How many photos fit on 74 pages?", "18 * 74", "1332"),
    (
        "A bridge is 2740 meters long. A walker has crossed 1965 meters. How many meters are left?",
        "2740 - 1965",
        "775",
    ),
    ("A factory packs 4125 nails into boxes of 75. How many boxes does it fill?", "4125 / 75", "55"),
)
