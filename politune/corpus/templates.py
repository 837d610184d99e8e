"""The sample corpus's own vocabulary: sentence templates per label, written for this project.

A post is one to three sentences drawn from its label's templates with the slots filled in, plus an
optional hashtag. The text is plausible at a glance and deliberately simple; it exists so every
stage has something shaped like social-media posts to chew on, with a known ground-truth label.
"""

LABELS = ("left", "right", "neutral", "off_topic")

SLOTS: dict[str, tuple[str, ...]] = {
    "left_issue": (
        "universal healthcare", "climate action", "a living wage", "union rights", "voting rights",
        "affordable housing", "student debt relief", "paid family leave", "clean energy jobs",
        "reproductive freedom", "public transit", "fair taxes on billionaires", "child care for all",
        "gun safety laws", "protecting immigrants", "expanding social security",
    ),
    "left_villain": (
        "corporate lobbyists", "big oil", "the billionaire class", "private insurers", "Wall Street",
        "union busters", "dark money groups", "predatory landlords", "price-gouging monopolies",
    ),
    "right_issue": (
        "border security", "lower taxes", "the Second Amendment", "energy independence",
        "school choice", "parental rights", "election integrity", "a balanced budget",
        "religious liberty", "backing the police", "cutting red tape", "small businesses",
        "domestic drilling", "free markets", "term limits", "ending wasteful spending",
    ),
    "right_villain": (
        "career politicians", "the fake news media", "unelected bureaucrats", "big tech censors",
        "radical activists", "the swamp", "globalist elites", "woke corporations", "tax-and-spend liberals",
    ),
    "group": (
        "working families", "seniors", "veterans", "nurses", "teachers", "farmers", "small business owners",
        "young people", "parents", "truck drivers", "retirees", "first-time home buyers",
    ),
    "place": (
        "Ohio", "Arizona", "Texas", "Michigan", "Georgia", "Pennsylvania", "Wisconsin", "Florida",
        "Nevada", "Iowa", "Maine", "Colorado", "our town", "the county", "the capital",
    ),
    "body": (
        "the Senate", "the House", "the state legislature", "city council", "the school board",
        "the county commission", "the governor's office", "the committee",
    ),
    "weekday": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "food": (
        "lasagna", "banana bread", "tacos", "chili", "ramen", "pancakes", "sourdough", "curry",
        "apple pie", "grilled cheese", "lentil soup", "pizza",
    ),
    "hobby": (
        "hiking", "chess", "woodworking", "knitting", "fishing", "gardening", "photography", "running",
        "board games", "birdwatching", "pottery", "guitar",
    ),
    "team": ("the Bears", "the Hawks", "the Rovers", "the Comets", "the Tigers", "the Mariners"),
    "pet": ("dog", "cat", "parrot", "rabbit", "hamster", "puppy", "kitten"),
}

TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": (
        "{left_issue} is not radical, it is what {group} in {place} need.",
        "{left_villain} spent millions to block {left_issue}. We will not back down.",
        "Call {body} today and demand {left_issue} for {group}.",
        "If we can bail out banks we can afford {left_issue}.",
        "Every study says {left_issue} saves lives and money. {left_villain} just don't care.",
        "Proud to march with {group} for {left_issue} this {weekday}.",
        "{group} are working two jobs while {left_villain} post record profits.",
        "Healthcare is a right, housing is a right, and {left_issue} should be too.",
        "Organize, vote, and win {left_issue}. That is how change happens in {place}.",
        "{body} just voted against {left_issue}. Remember that in November.",
        "The planet is burning and {left_villain} want more tax breaks.",
        "Solidarity with the {group} on strike in {place}.",
    ),
    "right": (
        "{right_issue} matters to {group} in {place}, not to {right_villain}.",
        "{right_villain} want to take away {right_issue}. We will not let them.",
        "Tell {body} to stand up for {right_issue} and stop the spending.",
        "Inflation is crushing {group} while {right_villain} print more money.",
        "We need {right_issue} now, before {right_villain} do more damage.",
        "Proud to stand with {group} for {right_issue} this {weekday}.",
        "Government does not create jobs, {group} do. Support {right_issue}.",
        "Secure the border, cut taxes, and protect {right_issue}.",
        "{body} just voted for more regulations. {group} in {place} will pay the price.",
        "Freedom is not free. Defend {right_issue} against {right_villain}.",
        "Less government, more liberty, and {right_issue} for {place}.",
        "{right_villain} never mention what their plans cost {group}.",
    ),
    "neutral": (
        "{body} will hold a hearing on the budget this {weekday}.",
        "Polls open at 7 am on {weekday} in {place}; bring a photo ID if your state requires one.",
        "New survey: voters in {place} split evenly on the top issue this year.",
        "The debate between the two candidates in {place} is scheduled for {weekday} night.",
        "Turnout in {place} reached a record in the last midterm election.",
        "{body} released the full text of the bill; the vote is expected next week.",
        "Early voting in {place} ends on {weekday}. Check your registration online.",
        "Analysts expect {body} to take up the spending package after the recess.",
    ),
    "off_topic": (
        "Made {food} for dinner tonight and it turned out great.",
        "Anyone have tips for getting into {hobby}? Just bought my first kit.",
        "{team} finally won at home! What a game.",
        "My {pet} knocked a plant off the shelf again this {weekday}.",
        "Rainy {weekday} in {place}, perfect day for {food} and a movie.",
        "Three weeks of {hobby} and I think I am hooked.",
        "Is it just me or is {food} better the next day?",
        "Road trip through {place} this weekend, any stops we should not miss?",
    ),
}

HASHTAGS: dict[str, tuple[str, ...]] = {
    "left": ("#MedicareForAll", "#ClimateAction", "#UnionStrong", "#TaxTheRich", "#VotingRights"),
    "right": ("#SecureTheBorder", "#2A", "#MAGA", "#LowerTaxes", "#BackTheBlue"),
    "neutral": ("#Election", "#Vote", "#Politics"),
    "off_topic": ("#Foodie", "#Weekend", "#PetsOfTwitter", "#GameDay"),
}

USER_PARTS = (
    "eagle", "river", "patriot", "prairie", "maple", "liberty", "union", "coastal", "granite",
    "harbor", "summit", "cedar", "redwood", "sunset", "bluebird", "ironworks",
)
