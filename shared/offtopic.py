"""A probe set of off-topic questions that a biomedical-literature QA system should abstain on.

What it is for: the QA API answers from PubMed abstracts, so a question with no biomedical content has
no evidence behind any answer, and the right reply is to abstain. This set measures how often the API
does (its abstention rate on off-topic input) and feeds the evaluator's abstention-correctness metric.
The retrieval relevance threshold is never fitted on it, only measured with it: fitting on the probe
would make the measured rate meaningless.

The questions were written for this project (not taken from any dataset). They cover general
knowledge (geography, history, sports, cooking, cars, programming, maths, music, finance, travel,
weather, pet care, household chores, grammar, trivia) and deliberately leave out anything touching
health or biology (nutrition, fitness, sleep, psychology, veterinary medicine), so that abstaining on
every one of them is unambiguously correct. They vary in form: yes/no, how, what, why, short and long.
"""

from __future__ import annotations

OFF_TOPIC_QUESTIONS: tuple[str, ...] = (
    # geography
    "What is the capital of France?",
    "Which river flows through Budapest?",
    "Is Mount Kilimanjaro in Kenya or Tanzania?",
    "How many countries share a border with Germany?",
    "What is the longest coastline of any country in the world?",
    # history
    "In what year did the Berlin Wall come down?",
    "Who was the first emperor of Rome?",
    "Why did the Byzantine Empire fall in 1453?",
    "Was the Great Wall of China built by a single dynasty?",
    "Which ship carried the Pilgrims to North America in 1620?",
    # sports
    "How many players are on the field for one side in a rugby union match?",
    "Who has won the most Grand Slam titles in men's tennis?",
    "What is the offside rule in football?",
    "Is cricket more popular than baseball in Australia?",
    "How long is a marathon in kilometres?",
    # cooking
    "How do I stop my risotto from turning gluey?",
    "What temperature should the oven be for baking sourdough bread?",
    "Can you freeze cooked rice and reheat it later?",
    "Why does my cake sink in the middle after it comes out of the oven?",
    "What is the difference between baking soda and baking powder in a recipe?",
    # cars
    "How often should the oil be changed in a petrol car?",
    "What does the check engine light mean on a Honda Civic?",
    "Is a diesel engine better than a hybrid for long motorway drives?",
    "How do you change a flat tyre on the side of the road?",
    # programming
    "Is Python faster than Java?",
    "How do I reverse a linked list in C?",
    "What is the difference between a process and a thread?",
    "Why does my JavaScript function return undefined instead of the value?",
    "How can I undo the last git commit without losing my changes?",
    "What does the yield keyword do in Python?",
    "Should I use PostgreSQL or MongoDB for a small web shop?",
    # maths
    "What is the derivative of x squared times sine of x?",
    "Is zero an even number?",
    "How do you calculate the area of a circle with a radius of 7 centimetres?",
    "Why is dividing by zero undefined?",
    "What is the sum of the interior angles of a hexagon?",
    # music
    "Who composed the Four Seasons?",
    "How many keys does a standard piano have?",
    "What is the difference between a major and a minor chord?",
    "Which band released the album Abbey Road?",
    # finance
    "What is the difference between a Roth IRA and a traditional IRA?",
    "Is it better to pay off a mortgage early or invest the money?",
    "How does compound interest work on a savings account?",
    "What happens to bond prices when interest rates go up?",
    # travel
    "Do I need a visa to visit Japan with a Canadian passport?",
    "What is the cheapest way to get from Paris to Amsterdam?",
    "Which time zone is Hawaii in?",
    "Can you take a power bank in checked luggage on a flight?",
    # weather
    "Why is the sky blue during the day and red at sunset?",
    "What causes a thunderstorm to form?",
    "Will it snow in London this December?",
    "How are hurricanes given their names?",
    # pets and animal care (not veterinary)
    "How often should I clean a goldfish tank?",
    "What is the best way to stop a puppy from chewing the furniture?",
    "How do you teach a parrot to talk?",
    # household chores
    "How do I get red wine out of a white carpet?",
    "What is the best way to descale a kettle?",
    "Can you put cast iron pans in the dishwasher?",
    "How do I unclog a kitchen sink without calling a plumber?",
    # grammar and language
    "When should I use 'whom' instead of 'who'?",
    "Is it correct to end a sentence with a preposition?",
    "What is the plural of 'octopus'?",
    "What is the difference between 'affect' and 'effect'?",
    # trivia and general knowledge
    "Who painted the ceiling of the Sistine Chapel?",
    "How tall is the Eiffel Tower?",
    "What is the chemical symbol for gold?",
    "Who wrote the novel One Hundred Years of Solitude?",
    "How many moons does Jupiter have?",
    "Why do clocks go forward in the spring?",
    "What was the first feature-length animated film?",
    "Is the Great Wall of China visible from space with the naked eye?",
)
