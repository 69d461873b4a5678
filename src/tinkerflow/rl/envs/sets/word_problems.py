# ruff: noqa: E501  (data: one problem per line reads best)
"""60 arithmetic word problems for the calculator-tool environment (:mod:`tinkerflow.rl.envs.tool_use`).

Written for this project (tinkerflow), under the project's license; no outside source. Each entry is
``(question, answer)``; the answer is the exact value as a decimal string (checked by the tests against the
calculator). Problems 0-47 are the training split, 48-59 the held-out split.
"""

from __future__ import annotations

from typing import Final

__all__ = ["WORD_PROBLEMS"]

WORD_PROBLEMS: Final[tuple[tuple[str, str], ...]] = (
    (
        "A bakery sells 48 muffins in the morning and 37 in the afternoon. Each muffin costs 3 dollars. How many dollars does the bakery take in?",
        "255",
    ),
    ("A train travels 342 kilometers in 4.5 hours. What is its average speed in kilometers per hour?", "76"),
    (
        "Maria buys 7 notebooks at 2.35 dollars each and pays with a 20-dollar bill. How much change does she get, in dollars?",
        "3.55",
    ),
    ("A farmer has 1,250 apples and packs them into boxes of 24. How many boxes can he fill completely?", "52"),
    (
        "A tank holds 3,600 liters. It is filled at 45 liters per minute. How many minutes does it take to fill the empty tank?",
        "80",
    ),
    ("A school has 18 classes with 27 students each. How many students are there in total?", "486"),
    ("Tom reads 35 pages a day. How many days does he need to finish a book of 455 pages?", "13"),
    ("A rectangle is 17 meters long and 9 meters wide. What is its area in square meters?", "153"),
    ("The price of a jacket is 80 dollars. It is discounted by 15 percent. What is the new price in dollars?", "68"),
    ("A car uses 6.5 liters of fuel per 100 kilometers. How many liters does it use for 340 kilometers?", "22.1"),
    ("Three friends share a bill of 127.50 dollars equally. How much does each pay, in dollars?", "42.5"),
    ("A garden is 24 meters long and 15 meters wide. How many meters of fence are needed to go around it?", "78"),
    ("A factory makes 1,375 bolts per hour. How many bolts does it make in an 8-hour shift?", "11000"),
    ("Anna saves 125 dollars every month. How many dollars has she saved after 2 years?", "3000"),
    ("A box of 12 pencils costs 4.20 dollars. What does one pencil cost, in dollars?", "0.35"),
    ("A cyclist rides at 18 kilometers per hour for 2.5 hours. How many kilometers does she ride?", "45"),
    ("A library has 4,816 books on 28 shelves, the same number on each. How many books are on each shelf?", "172"),
    (
        "The temperature was -7 degrees in the morning and rose by 19 degrees by noon. What was the temperature at noon?",
        "12",
    ),
    ("A recipe needs 250 grams of flour for 4 people. How many grams are needed for 10 people?", "625"),
    (
        "A phone plan costs 29 dollars a month plus 0.10 dollars per text. Lena sends 230 texts in a month. What is her bill in dollars?",
        "52",
    ),
    ("A swimming pool is 25 meters long. Sam swims 36 lengths. How many meters does he swim?", "900"),
    ("A theater has 32 rows of 45 seats. 1,102 tickets are sold. How many seats are empty?", "338"),
    (
        "A shop buys a lamp for 40 dollars and sells it for 58 dollars. What is the profit as a percentage of the cost?",
        "45",
    ),
    (
        "A worker earns 22.50 dollars per hour and works 38 hours a week. How much does the worker earn in a week, in dollars?",
        "855",
    ),
    ("A rope 15 meters long is cut into pieces of 0.6 meters. How many pieces are there?", "25"),
    ("A bus carries 52 passengers. How many buses are needed for 700 passengers?", "14"),
    ("The sum of two numbers is 84 and one of them is 29 more than the other. What is the larger number?", "56.5"),
    ("A square has a perimeter of 68 centimeters. What is its area in square centimeters?", "289"),
    ("A bottle holds 1.5 liters. How many bottles can be filled from 42 liters?", "28"),
    (
        "An investment of 2,000 dollars earns 5 percent simple interest per year. What is it worth after 3 years, in dollars?",
        "2300",
    ),
    ("A printer prints 14 pages per minute. How many pages does it print in 1 hour and 15 minutes?", "1050"),
    ("A class of 30 students has 18 girls. What percentage of the class are boys?", "40"),
    ("Jack is 3 times as old as his son. The sum of their ages is 52. How old is Jack?", "39"),
    ("A truck carries 2.4 tonnes per trip. How many tonnes does it carry in 35 trips?", "84"),
    ("A movie starts at 19:40 and lasts 135 minutes. How many minutes after 21:00 does it end?", "55"),
    ("A field of 7.2 hectares is divided into 9 equal plots. How many hectares is each plot?", "0.8"),
    ("A runner completes a 10,000-meter race in 40 minutes. What is the average speed in meters per minute?", "250"),
    ("A store sells pens in packs of 6 for 3.90 dollars. How much do 45 pens cost, in dollars?", "29.25"),
    (
        "A triangle has a base of 14 centimeters and a height of 9 centimeters. What is its area in square centimeters?",
        "63",
    ),
    (
        "A water bill charges 1.80 dollars per cubic meter. A family uses 23 cubic meters. What is the bill in dollars?",
        "41.4",
    ),
    ("A plane flies 2,730 kilometers in 3.5 hours. What is its average speed in kilometers per hour?", "780"),
    ("A company has 240 employees; 35 percent work remotely. How many employees work remotely?", "84"),
    (
        "A bag of rice weighs 25 kilograms. A restaurant uses 1.25 kilograms a day. How many days does the bag last?",
        "20",
    ),
    ("Four boxes weigh 12.5, 8.75, 10.25 and 9.5 kilograms. What is their total weight in kilograms?", "41"),
    ("A number is doubled and then 17 is added, giving 91. What is the number?", "37"),
    ("A cube has edges of 6 centimeters. What is its volume in cubic centimeters?", "216"),
    ("A tap drips 3 milliliters every minute. How many liters does it drip in a week?", "30.24"),
    ("A club has 126 members. Two thirds of them attend a meeting. How many attend?", "84"),
    (
        "A car is bought for 18,000 dollars and loses 12 percent of its value. What is it worth afterwards, in dollars?",
        "15840",
    ),
    (
        "A painter needs 1 liter of paint for 8 square meters. How many liters are needed for a wall of 12 by 3 meters?",
        "4.5",
    ),
    ("A hiker walks 4.8 kilometers per hour. How many minutes does she need for 6 kilometers?", "75"),
    ("A school orders 36 boxes of chalk with 144 sticks each. How many sticks is that?", "5184"),
    (
        "A tree grows 45 centimeters a year. It is 2.3 meters tall now. How tall will it be in 4 years, in meters?",
        "4.1",
    ),
    ("A concert hall sold 1,845 tickets at 24 dollars each. What was the revenue in dollars?", "44280"),
    ("The average of four test scores is 82. Three of the scores are 75, 88 and 79. What is the fourth score?", "86"),
    ("A pizza is cut into 8 slices. 5 friends eat 3 slices each. How many whole pizzas must be ordered at least?", "2"),
    (
        "A map has a scale of 1 to 25,000. Two towns are 14 centimeters apart on the map. How many kilometers apart are they?",
        "3.5",
    ),
    ("A battery lasts 9 hours at full charge. It is at 40 percent. How many minutes are left?", "216"),
    (
        "A shop sells 3 shirts for 45 dollars. How much do 11 shirts cost at the same price per shirt, in dollars?",
        "165",
    ),
    ("Twelve workers build a wall in 10 days. How many days would 15 workers need at the same rate?", "8"),
)
