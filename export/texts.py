"""The built-in validation set, plus loading a user's file of one text per line.

Short in-domain requests (assistant/banking/travel style), out-of-domain prose,
texts far beyond any max length, and odd inputs (emoji, scripts, whitespace,
markup), because verification must cover what production will send.
"""

from __future__ import annotations

from pathlib import Path

from export.errors import BadValidationFile, InputNotFound

IN_DOMAIN = """\
what is my checking account balance
how much money do i have in savings
transfer $200 from checking to savings
move fifty dollars to my brother's account
my card was declined at the store
why did my credit card get declined
i lost my credit card
report my card as stolen
freeze my debit card right now
what's the interest rate on my savings account
can you tell me my credit score
how do i improve my credit score
what is my credit limit
can i get a credit limit increase
when is my credit card payment due
pay my electricity bill
set up automatic bill payments
show me my recent transactions
there is a charge i don't recognize on my statement
what's the routing number for my bank
how do i apply for a new credit card
i want to cancel my credit card
how many rewards points do i have
redeem my points for a gift card
what's the exchange rate from dollars to euros
convert 100 dollars to yen
what's my pin number
i need to change my pin
how do i set up direct deposit
when will my paycheck arrive
order new checks for me
what is the minimum payment on my card
am i able to get a loan for a car
what's the apr on my card
book a flight from boston to chicago next friday
i need a hotel in new york for two nights
reserve a table for four at an italian restaurant tonight
is it going to rain tomorrow
what's the weather like in paris this weekend
set an alarm for 6 am
wake me up at seven tomorrow morning
set a timer for 10 minutes
remind me to call mom at 5pm
add milk to my shopping list
what's on my shopping list
add dentist appointment to my calendar on tuesday
what meetings do i have today
cancel my 3 o'clock meeting
what time is it in tokyo
what's today's date
how do you say thank you in spanish
translate good morning into german
what does the word ephemeral mean
how do you spell necessary
tell me a joke
flip a coin
roll a dice for me
pick a random number between 1 and 10
what's 15 percent of 80
what is the square root of 144
how many cups are in a gallon
convert 5 miles to kilometers
play some jazz music
turn the volume up
turn off the lights in the kitchen
what's a good recipe for lasagna
how long should i cook chicken breast in the oven
how many calories are in an apple
is it safe to eat raw cookie dough
what ingredients do i need for pancakes
find me a recipe that uses spinach
what's the nutritional info for a banana
i need to change the oil in my car
when is my car due for maintenance
how much gas is left in my tank
what's the tire pressure on my car
how long will it take to drive to the airport
what's the traffic like on the way to work
where is the nearest gas station
how do i get to the train station from here
what's my flight status
i need to change my flight to thursday
my luggage was lost
what are the travel rules for carry-on bags
do i need a visa to visit brazil
what vaccines do i need before traveling to india
book an uber to downtown
i need a rental car in denver
how do i file my taxes
what's my w2
how much vacation time do i have left
request a day off next monday
who is my manager
what's my employee id
schedule a meeting with the design team
what is the meaning of life
are you a robot
what is your name
how old are you
where are you from
who made you
do you have any pets
what are your hobbies
thank you so much
goodbye
hello there
how are you doing today
you're not being helpful
can you repeat that
speak slower please
change your name to max
switch your voice to male
what can you help me with
let's play a game
tell me a fun fact
i'm not satisfied with your last answer
can you explain the previous answer in more detail
rewrite that answer as three bullet points
elaborate on what you just said
continue the explanation
connect me to a human agent
i want to speak to a real person
transfer me to customer service
let me talk to a representative
i want to file a formal complaint
escalate this issue to your supervisor
this is the third time i've asked, escalate it now
this is terrible service
i'm really frustrated with this app
you are useless
please help immediately, my account was hacked
urgent: someone is using my card without permission
i need help right now, i've been locked out
i have a general question about your services
what are your customer support hours
how do i contact support
how do i reset my password
update my mailing address
change my phone number on file
what's the balance on my gift card
is my insurance claim approved
how do i renew my policy
what does my insurance cover
find my phone
text my wife that i'm running late
call dad
what's the next song on this playlist
who sang this song
recommend a good movie
what's the population of canada
how far away is the moon
what's the capital of australia
when does the mall close today
is the pharmacy open on sunday
how do i make a smoothie
what should i name my dog
my order hasn't arrived yet
where is my package
i want to return these shoes
""".splitlines()

OUT_OF_DOMAIN = """\
The mitochondria is the powerhouse of the cell, producing most of its chemical energy.
In 1492 Columbus sailed the ocean blue.
Photosynthesis converts light energy into chemical energy stored in glucose.
The stock market closed lower today amid concerns about inflation.
A quick brown fox jumps over the lazy dog.
The committee will reconvene after the holiday recess to discuss the budget.
Quantum entanglement describes correlations between particles that cannot be explained classically.
She planted tomatoes, basil and peppers along the south-facing fence.
The symphony's second movement is marked adagio and features a solo oboe.
Glaciers carved the valley over tens of thousands of years.
Our quarterly revenue grew eight percent year over year.
The referee blew the whistle and the crowd erupted.
He repaired the bicycle chain with a spare link and some grease.
Volcanic eruptions can inject sulfur dioxide into the stratosphere.
The novel follows three generations of a family in rural Ireland.
Please review the attached pull request before Friday's release.
The algorithm runs in O(n log n) time and uses constant extra memory.
Penguins are flightless birds found almost exclusively in the southern hemisphere.
The museum's new wing houses modern sculpture from the 1960s.
Rain is expected to clear by the afternoon, leaving cool and breezy conditions.
The recipe calls for two eggs, a cup of flour and a pinch of salt.
Ancient Rome's aqueducts carried water across great distances using gravity alone.
The defendant pleaded not guilty to all charges.
Bananas are botanically berries, while strawberries are not.
The spacecraft entered orbit around Jupiter after a five-year journey.
Chess openings such as the Sicilian Defence have been studied for centuries.
The documentary explores the migration of monarch butterflies.
Interest in vintage vinyl records has grown steadily over the past decade.
The bridge was closed for repairs after inspectors found corrosion.
A haiku traditionally has three lines of five, seven and five syllables.
The violinist tuned her instrument before the concert began.
Volunteers cleaned up the beach and collected over two hundred kilograms of plastic.
The ancient manuscript was written on vellum in iron gall ink.
Electric cars have fewer moving parts than those with combustion engines.
The hikers reached the summit just before sunrise.
Coral reefs support about a quarter of all marine species.
The lecture covered the causes of the First World War.
Bread rises because yeast produces carbon dioxide during fermentation.
The city council approved a new bike lane on Main Street.
Honeybees communicate the location of flowers through a waggle dance.
The server returned a 502 error after the upstream timed out.
Saturn's rings are made mostly of ice particles.
The painter used thick layers of oil paint to create texture.
Sourdough starter needs to be fed regularly with flour and water.
The treaty was signed by twelve nations in Geneva.
A leap year has 366 days.
The orchestra rehearsed the piece until midnight.
Lightning is a sudden electrostatic discharge during a storm.
The data was normalised before training the regression model.
Cats spend a large part of the day sleeping.
""".splitlines()

_PARAGRAPH = (
    "The history of natural language processing generally started in the 1950s, although work "
    "can be found from earlier periods. In 1950, Alan Turing published an article titled "
    "'Computing Machinery and Intelligence' which proposed what is now called the Turing test "
    "as a criterion of intelligence. "
)

LONG = [
    _PARAGRAPH * 12,
    "please transfer money to my savings account " * 60,
    "connect me to a human agent right now " + "because this is taking forever " * 50,
    ("word " * 700).strip(),
    "🙂 " * 600,
    "supercalifragilisticexpialidocious" * 40,
]

ODD = [
    "",
    " ",
    "\n\t  \n",
    "?",
    "!!!!!!!!",
    "😀🎉🔥",
    "can u plz help me w/ my acct??? 🙏",
    "WHAT IS MY BALANCE",
    "wHaT iS mY bAlAnCe",
    "¿Cuál es el saldo de mi cuenta?",
    "Wie spät ist es in Berlin?",
    "我的银行卡丢了",
    "мой баланс",
    "مرحبا كيف حالك",
    "こんにちは、天気はどうですか",
    "<script>alert('x')</script>",
    "SELECT * FROM accounts; --",
    "https://example.com/path?query=1&x=2",
    "1234 5678 9012 3456",
    "a\u0301 e\u0301 n\u0303 \u200b\u200d zero-width",
    "\u202etxet sdrawkcab",
    "set\u00a0an\u00a0alarm\u00a0for\u00a07",
    "tl;dr: ok",
    "   leading and trailing whitespace   ",
]


def builtin_texts() -> list[str]:
    return [t for t in IN_DOMAIN if t] + [t for t in OUT_OF_DOMAIN if t] + LONG + ODD


def read_lines(path: str | Path, expected: str) -> list[tuple[int, str]]:
    """Numbered non-blank lines of a UTF-8 file; an empty file is an error naming ``expected``."""
    path = Path(path)
    if path.is_dir():
        raise BadValidationFile(f"validation file {path} is a directory; expected a text file ({expected})")
    if not path.is_file():
        raise InputNotFound(f"validation file {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadValidationFile(f"validation file {path} cannot be read as UTF-8 text: {exc}") from None
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise BadValidationFile(f"validation file {path} holds no texts (expected {expected})")
    return numbered


def read_text_file(path: str | Path) -> list[str]:
    """One text per line; blank lines are skipped. An empty file is an error."""
    return [line for _, line in read_lines(path, "one text per line")]
