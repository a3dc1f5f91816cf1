"""Generate the bundled SMS spam/ham sample (``data/sms_spam.csv``).

Why generate instead of shipping the UCI collection: this repository must run with no network,
and its data must teach *meaning*, not keywords. The UCI set (2011) is full of "txt WIN to 8xxxx";
today's spam is parcel and bank phishing with look-alike links and "hi mum, new number" scams,
while real ham is full of words a keyword filter calls spammy ("I won", "free tonight?",
"reply when you can"). Both sides here are built from many independent parts (openers, bodies,
calls to action, people, places, amounts, links) with typos, casing, emoji and number formats
varied per message, so no single template or word separates the classes.

Run ``python data/generate_sms.py`` to rewrite the csv; the output is deterministic for a seed.
``python data/generate_sms.py --n 5000 --seed 7 --out /tmp/sms.csv`` makes another sample.
"""

from __future__ import annotations

import argparse
import csv
import random
import string
from collections.abc import Callable
from pathlib import Path

DEFAULT_OUT = Path(__file__).with_name("sms_spam.csv")
SPAM_SHARE = 0.35

# ----------------------------------------------------------------------------- shared fillers
FIRST_NAMES = [
    "Sam",
    "Priya",
    "Tom",
    "Aisha",
    "Jake",
    "Mia",
    "Olu",
    "Chen",
    "Lucy",
    "Dan",
    "Zara",
    "Ben",
    "Fatima",
    "Leo",
    "Grace",
    "Kofi",
    "Ellie",
    "Raj",
    "Nina",
    "Marek",
    "Hannah",
    "Luis",
    "Amara",
    "Josh",
    "Sofia",
    "Callum",
    "Yuki",
    "Ada",
    "Ibrahim",
    "Rosa",
]
FAMILY = ["mum", "mom", "dad", "nan", "grandad", "auntie", "sis", "bro", "babe", "hun"]
PLACES = [
    "Tesco",
    "the station",
    "Costa",
    "the gym",
    "work",
    "the pub",
    "uni",
    "the library",
    "Lidl",
    "the park",
    "the office",
    "town",
    "Nando's",
    "the dentist",
    "school",
    "church",
    "the match",
    "Sainsbury's",
    "the airport",
    "the vets",
    "Ikea",
    "the cinema",
    "Aldi",
]
TIMES = [
    "6",
    "7pm",
    "half 8",
    "10:30",
    "noon",
    "5.45",
    "quarter past 7",
    "9ish",
    "8:15",
    "11",
    "after lunch",
    "tonight",
    "tmrw morning",
    "lunchtime",
    "20:00",
    "about 4",
]
FOODS = [
    "pizza",
    "curry",
    "tacos",
    "a roast",
    "sushi",
    "chippy tea",
    "pasta",
    "burgers",
    "pho",
    "a kebab",
    "bbq",
    "pancakes",
    "jollof",
    "dumplings",
]
THINGS = [
    "charger",
    "keys",
    "umbrella",
    "jacket",
    "wallet",
    "headphones",
    "laptop",
    "glasses",
    "bank card",
    "passport",
    "gym bag",
    "lunchbox",
    "library book",
]
EMOJI_HAM = [
    "😂",
    "😊",
    "❤️",
    "👍",
    "🙈",
    "😅",
    "🎉",
    "😴",
    "🍕",
    "🙏",
    "😘",
    "🤣",
    "🥲",
    "xx",
    "x",
    ":)",
    ":D",
    "lol",
]
EMOJI_SPAM = ["📦", "⚠️", "🚨", "🎁", "💰", "✅", "🔒", "❗", "🏆", "💸", "📲", "👉"]

CARRIERS = [
    "Royal Mail",
    "Evri",
    "DPD",
    "UPS",
    "FedEx",
    "USPS",
    "DHL",
    "Parcelforce",
    "Yodel",
    "InPost",
    "Amazon Logistics",
]
BANKS = [
    "Barclays",
    "HSBC",
    "Lloyds",
    "NatWest",
    "Santander",
    "Monzo",
    "Chase",
    "Wells Fargo",
    "Halifax",
    "Revolut",
    "Nationwide",
    "Starling",
    "Bank of America",
    "TSB",
]
STREAMERS = ["Netflix", "Disney+", "Spotify", "Amazon Prime", "Apple TV", "NOW TV", "YouTube Premium"]
TAX = ["HMRC", "IRS", "Gov.uk", "DVLA", "TV Licensing", "the Tax Office", "CRA"]
LOOKALIKE_STEMS = {
    "Royal Mail": ["royalmail-redelivery", "rm-parcel-fee", "royal-mail-uk-track"],
    "Evri": ["evri-reschedule", "evri-uk-delivery", "myevri-help"],
    "DPD": ["dpd-parcelfee", "dpd-uk-tracking", "dpdlocal-redeliver"],
    "UPS": ["ups-customs-pay", "ups-track-parcel"],
    "FedEx": ["fedex-held-item", "fed-ex-customs"],
    "USPS": ["usps-redelivery-help", "usps-addressupdate"],
    "DHL": ["dhl-express-fee", "dhl-pkg-hold"],
    "Parcelforce": ["parcelforce-arrange"],
    "Yodel": ["yodel-reschedule"],
    "InPost": ["inpost-locker-fee"],
    "Amazon Logistics": ["amzn-delivery-issue", "amazon-logistics-help"],
}
TLDS = [
    ".com",
    ".co",
    ".info",
    ".top",
    ".xyz",
    ".online",
    ".net",
    ".support",
    ".live",
    ".app",
    ".uk.com",
    "-gov.uk.co",
    ".site",
    ".click",
]
SHORTENERS = ["bit.ly/", "tinyurl.com/", "t.ly/", "cutt.ly/", "rb.gy/", "is.gd/"]


def _code(rng: random.Random, n: int, alphabet: str = string.ascii_uppercase + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _money(rng: random.Random, low: float, high: float, cents: bool = True) -> str:
    amount = rng.uniform(low, high)
    sym = rng.choice(["£", "£", "$", "€"])
    return f"{sym}{amount:,.2f}" if cents else f"{sym}{int(amount):,}"


def _uk_mobile(rng: random.Random) -> str:
    digits = "07" + _code(rng, 9, string.digits)
    return rng.choice([digits, f"{digits[:5]} {digits[5:]}", "+44 " + digits[1:5] + " " + digits[5:]])


def _premium(rng: random.Random) -> str:
    return rng.choice(["09", "0871", "0906", "8"]) + _code(rng, rng.randint(4, 7), string.digits)


def _scam_link(rng: random.Random, stem: str) -> str:
    if rng.random() < 0.2:
        return "https://" + rng.choice(SHORTENERS) + _code(rng, 6, string.ascii_letters + string.digits)
    path = rng.choice(
        [
            "",
            "/pay",
            "/verify",
            "/track?id=" + _code(rng, 8),
            "/login",
            "/secure",
            "/" + _code(rng, 5).lower(),
            "/claim",
            "/update",
        ]
    )
    scheme = rng.choice(["https://", "http://", "", "www."])
    return f"{scheme}{stem}{rng.choice(TLDS)}{path}"


def _brand_stem(rng: random.Random, brand: str) -> str:
    base = brand.lower().replace(" ", "").replace("+", "plus").replace(".", "")
    return rng.choice(
        [
            f"{base}-secure",
            f"{base}-verify",
            f"my{base}-help",
            f"{base}-account",
            f"{base}-billing",
            f"{base}-support{rng.randint(1, 99)}",
            f"{base}-uk",
        ]
    )


# ----------------------------------------------------------------------------- spam families
def spam_parcel(rng: random.Random) -> str:
    carrier = rng.choice(CARRIERS)
    link = _scam_link(rng, rng.choice(LOOKALIKE_STEMS[carrier]))
    fee = _money(rng, 0.99, 3.49)
    ref = _code(rng, rng.choice([8, 10, 12]))
    opener = rng.choice(
        [
            f"{carrier}:",
            f"{carrier} UK:",
            f"[{carrier}]",
            "Delivery notice:",
            f"{carrier} - parcel {ref}:",
            "We missed you!",
            "",
        ]
    )
    body = rng.choice(
        [
            f"your parcel could not be delivered due to an unpaid shipping fee of {fee}.",
            "we attempted delivery of your package today but no one was available.",
            f"your item is being held at our depot. A {fee} redelivery fee is outstanding.",
            f"the address on your parcel {ref} is incomplete and it will be returned to sender.",
            f"customs charges of {fee} must be paid before your package can be released.",
            "your package has arrived at the warehouse but cannot be delivered because the house number is missing.",
            f"delivery of your order failed ({rng.choice(['address error', 'unpaid duty', 'no safe place'])}).",
        ]
    )
    cta = rng.choice(
        [
            f"Reschedule here: {link}",
            f"Pay now at {link}",
            f"Please update your details: {link}",
            f"Confirm your address within 24h {link}",
            f"{link} to arrange a new date.",
            f"Visit {link} otherwise it will be returned.",
            f"Track & pay: {link}",
        ]
    )
    return " ".join(p for p in (opener, body, cta) if p)


def spam_bank(rng: random.Random) -> str:
    bank = rng.choice(BANKS)
    link = _scam_link(rng, _brand_stem(rng, bank))
    amount = _money(rng, 49, 1999)
    body = rng.choice(
        [
            f"a payment of {amount} to {rng.choice(['PAYPAL *EBAY', 'APPLE.COM/BILL', 'AMZN Mktp', 'Coinbase', 'BINANCE'])} is pending.",
            f"we detected a sign-in to your account from a new device in {rng.choice(['Lagos', 'Moscow', 'Manchester', 'Dubai', 'Kyiv', 'Texas'])}.",
            "your account has been temporarily restricted for your security.",
            "a new payee has been added to your account.",
            f"your card ending {_code(rng, 4, string.digits)} has been suspended due to suspicious activity.",
            "we were unable to verify your identity and your online banking will be frozen.",
        ]
    )
    cta = rng.choice(
        [
            f"If this was NOT you, cancel at {link}",
            f"Verify now: {link}",
            f"To keep access, confirm your details at {link}",
            f"Secure your account {link}",
            f"If you did not request this call {_uk_mobile(rng)} or go to {link}",
        ]
    )
    return f"{bank}: {body} {cta}" if rng.random() < 0.8 else f"{body.capitalize()} {cta} - {bank}"


def spam_tax_streaming(rng: random.Random) -> str:
    if rng.random() < 0.5:
        org = rng.choice(TAX)
        link = _scam_link(rng, _brand_stem(rng, org))
        body = rng.choice(
            [
                f"you are due a tax refund of {_money(rng, 120, 950)}. Submit your claim by {rng.choice(['Friday', 'midnight', 'the 28th', 'tomorrow'])}:",
                "our records show an outstanding balance. Avoid a penalty by paying today:",
                "your vehicle tax payment failed. Update your card to avoid a fine:",
                "you have an unpaid penalty charge notice. Settle it here:",
                f"final reminder: {_money(rng, 60, 400)} owed. Legal action will start if unpaid:",
            ]
        )
        return f"{org}: {body} {link}"
    svc = rng.choice(STREAMERS)
    link = _scam_link(rng, _brand_stem(rng, svc))
    body = rng.choice(
        [
            "your payment was declined and your membership is on hold.",
            "we couldn't process your last bill. Your subscription will be cancelled today.",
            "your account will be suspended unless you update your billing info.",
            f"enjoy 12 months for just {_money(rng, 1, 3)} - exclusive loyalty reward.",
        ]
    )
    return f"{svc}: {body} {rng.choice(['Update', 'Restore access', 'Resolve it', 'Go'])}: {link}"


def spam_new_number(rng: random.Random) -> str:
    who = rng.choice(FAMILY)
    opener = rng.choice(
        [f"Hi {who}", f"Hello {who}", f"{who.capitalize()} it's me", f"hey {who}", f"Hi {who} 🥺"]
    )
    story = rng.choice(
        [
            "this is my new number, I dropped my phone in the bath",
            "my phone broke so I'm using a friend's for now",
            "I've lost my phone, this is my new number you can delete the old one",
            "new number, the old sim stopped working",
            "I'm texting from a new phone, the screen on my old one smashed",
        ]
    )
    ask = rng.choice(
        [
            f"can you message me on WhatsApp on {_uk_mobile(rng)}?",
            f"I need to pay a bill of {_money(rng, 300, 1900)} today but my banking app is locked on the new phone, could you help? I'll pay you back tomorrow",
            "can you do me a favour and send some money, it's urgent, I'll explain later",
            f"please save this number and text me on whatsapp {_uk_mobile(rng)} x",
            "are you free to chat? I need a quick favour with a payment",
        ]
    )
    return f"{opener} {story}, {ask}"


def spam_prize(rng: random.Random) -> str:
    prize = rng.choice(
        [
            f"{_money(rng, 500, 5000, cents=False)} cash",
            "an iPhone 17 Pro",
            "a PS5 bundle",
            f"a {_money(rng, 100, 500, cents=False)} Tesco voucher",
            "a 2-week Ibiza holiday",
            "a Samsung Galaxy",
            "Dyson Airwrap",
            f"{_money(rng, 250, 1000, cents=False)} Amazon gift card",
        ]
    )
    premium = _premium(rng)
    rate = rng.choice(["£1.50/min", "150p/msg", "£3/wk", "£2.50 per call", "std rates apply", "18+"])
    body = rng.choice(
        [
            f"Congratulations! Your number was selected in our monthly draw to receive {prize}.",
            f"You have been chosen as today's lucky winner of {prize}!",
            f"FINAL NOTICE: your unclaimed reward of {prize} expires tonight.",
            f"Thank you for being a loyal customer, you are eligible for {prize}.",
            f"Your mobile won {prize} in the {rng.choice(['UK', 'national', 'customer'])} prize draw.",
        ]
    )
    cta = rng.choice(
        [
            f"Call {premium} now ({rate})",
            f"Text CLAIM to {premium} ({rate})",
            f"Collect at {_scam_link(rng, 'prize-collect')}",
            f"Reply YES to {premium}. {rate}",
            f"To receive it, complete a short survey: {_scam_link(rng, 'winner-survey')}",
        ]
    )
    return f"{body} {cta}"


def spam_money(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.35:
        return rng.choice(
            [
                f"Need cash fast? Borrow up to {_money(rng, 500, 5000, cents=False)} today, no credit checks. Reply LOAN to apply",
                f"You're pre-approved for a {_money(rng, 1000, 15000, cents=False)} loan at 0% for 12 months. Apply: {_scam_link(rng, 'easy-loans')}",
                f"Debt problems? New govt scheme writes off up to 80% of what you owe. Check eligibility {_scam_link(rng, 'debt-relief')}",
                f"Bad credit OK. Instant payout of {_money(rng, 200, 2000, cents=False)} to your bank within 1 hour. Txt GO to {_premium(rng)}",
            ]
        )
    if kind < 0.7:
        return rng.choice(
            [
                f"Turn {_money(rng, 200, 300, cents=False)} into {_money(rng, 5000, 20000, cents=False)} in 7 days with our AI trading bot. Join {_scam_link(rng, 'ai-crypto-profit')}",
                f"BTC is pumping! Our VIP signals group made members {rng.randint(180, 900)}% last month. Free entry today only: {_scam_link(rng, 'vip-signals')}",
                f"Your crypto wallet has {_money(rng, 1500, 9000)} in unclaimed rewards. Withdraw before it expires: {_scam_link(rng, 'wallet-airdrop')}",
                f"Hi, I'm {rng.choice(FIRST_NAMES)} from the investment team. Guaranteed returns of {rng.randint(15, 40)}% weekly, minimum deposit {_money(rng, 100, 250, cents=False)}. Interested?",
            ]
        )
    pay = _money(rng, 150, 600, cents=False)
    return rng.choice(
        [
            f"Hi, we found your CV on {rng.choice(['Indeed', 'Reed', 'LinkedIn', 'Totaljobs'])}. Part-time remote role, earn {pay}/day, 1-2 hrs. Contact us on WhatsApp {_uk_mobile(rng)}",
            f"Hello! Our company is hiring online assistants. Like videos and earn {pay} per day. Interested? Reply 1",
            f"Work from home opportunity: {pay} daily for simple app review tasks, no experience needed. Message {_scam_link(rng, 'hire-now')}",
            f"Recruiter here - flexible job paying {pay}/day. Save my number and text me on telegram @{rng.choice(['hr_', 'jobs_', 'team'])}{_code(rng, 4).lower()}",
        ]
    )


def spam_account(rng: random.Random) -> str:
    brand = rng.choice(
        [
            "Apple",
            "iCloud",
            "Amazon",
            "PayPal",
            "Microsoft",
            "WhatsApp",
            "Instagram",
            "Vodafone",
            "EE",
            "O2",
            "Three",
            "Octopus Energy",
            "British Gas",
            "E-ZPass",
            "Evri",
        ]
    )
    link = _scam_link(rng, _brand_stem(rng, brand))
    body = rng.choice(
        [
            f"your {brand} ID has been locked due to a failed login attempt.",
            f"order #{_code(rng, 3, string.digits)}-{_code(rng, 7, string.digits)} for {_money(rng, 300, 1400)} has been placed. Not you?",
            f"you are owed a refund of {_money(rng, 40, 300)} from an overpayment on your account.",
            f"you have an unpaid toll of {_money(rng, 2, 9)}. Late fees of {_money(rng, 30, 60)} apply after today.",
            "your cloud storage is full and your photos will be deleted.",
            "your account will be deactivated in 24 hours unless you verify your email.",
        ]
    )
    return rng.choice(
        [
            f"{brand}: {body} {link}",
            f"{body.capitalize()} Visit {link} ({brand})",
            f"[{brand}] {body} Sign in: {link}",
        ]
    )


def spam_short(rng: random.Random) -> str:
    """Terse scams: a brand or a relative, one claim, one demand; few of the longer scams' words."""
    carrier, bank = rng.choice(CARRIERS), rng.choice(BANKS)
    link = _scam_link(
        rng, rng.choice(LOOKALIKE_STEMS[carrier]) if rng.random() < 0.5 else _brand_stem(rng, bank)
    )
    fee, who = _money(rng, 0.99, 4.99), rng.choice(FAMILY)
    amount = (
        _money(rng, 80, 900, cents=False).lstrip("£$€")
        if rng.random() < 0.4
        else _money(rng, 80, 900, cents=False)
    )
    return rng.choice(
        [
            f"{carrier}: parcel held. Pay {fee} to release: {link}",
            f"{carrier}: your parcel is on hold, pay {fee} at {link}",
            f"Your parcel is held at our depot. Release fee {fee}: {link}",
            f"{bank}: action needed on your account {link}",
            f"{bank}: payment blocked. Confirm it was you: {link}",
            f"Action required: verify your details today {link}",
            f"Hi {who}, new phone. Can you send {amount} for rent today? x",
            f"{who} it's me, lost my phone. Can you transfer {amount}? Will pay you back tmrw",
            f"Hey {who}, this is my new number. Need {amount} for a bill urgently, can you help?",
            f"Final notice: unpaid {rng.choice(['toll', 'parking charge', 'fine'])} {fee}. Pay now {link}",
        ]
    )


SPAM_FAMILIES: list[Callable[[random.Random], str]] = [
    spam_short,
    spam_parcel,
    spam_parcel,
    spam_bank,
    spam_bank,
    spam_tax_streaming,
    spam_new_number,
    spam_prize,
    spam_money,
    spam_money,
    spam_account,
]


# ----------------------------------------------------------------------------- ham families
def ham_plans(rng: random.Random) -> str:
    n, t, p = rng.choice(FIRST_NAMES), rng.choice(TIMES), rng.choice(PLACES)
    return rng.choice(
        [
            f"Are you free tonight? Thinking {rng.choice(FOODS)} at mine around {t}",
            f"meet you at {p} at {t}?",
            f"Running late, be there by {t}. Sorry!!",
            f"{n} is coming too if that's ok",
            f"Can we move it to {t}? {p} is packed",
            f"I'm outside {p}, where are you",
            f"free on saturday? {n} wants to do {rng.choice(FOODS)}",
            "Text me when you're home safe",
            "reply when you can, no rush",
            f"Just got to {p}, grabbing a table",
            f"Still on for {t}? I can drive",
            f"Fancy {p} later? I've got a free pass for a mate",
            f"We should claim the big table at {p} before everyone turns up",
            f"did {n} reply about {rng.choice(['saturday', 'the weekend', 'friday', 'the bbq', 'bonfire night'])}?",
        ]
    )


def ham_family(rng: random.Random) -> str:
    n, thing = rng.choice(FIRST_NAMES), rng.choice(THINGS)
    return rng.choice(
        [
            f"Can you pick {n} up from {rng.choice(['school', 'football', 'swimming', 'nursery'])}? I'm stuck in a meeting",
            f"Urgent - have you seen my {thing}? Can't find it anywhere",
            f"Left my {thing} at yours I think",
            f"Nan says thanks for the flowers {rng.choice(EMOJI_HAM)}",
            f"dinner's in the oven, back by {rng.choice(TIMES)}",
            f"Don't forget it's {n}'s birthday on {rng.choice(['Sunday', 'Tuesday', 'the 14th', 'friday'])}",
            f"Hi mum, landed safely, will call you {rng.choice(['later', 'tonight', 'in the morning'])}",
            "Dad can you send me the wifi password again",
            f"We need milk, bread and {rng.choice(FOODS)} stuff if you're passing {rng.choice(['Tesco', 'Lidl', 'Aldi', 'the shop'])}",
            f"The parcel came btw, {rng.choice(['left it with next door', 'it is in the porch', 'I put it in the shed'])}",
            f"Changed my number, this is {n}'s new one. Save it when you get a sec",
            f"Mum the {rng.choice(['boiler', 'washing machine', 'car', 'dishwasher'])} is making that noise again",
            f"{n} won his match today!! so proud {rng.choice(EMOJI_HAM)}",
        ]
    )


def ham_money(rng: random.Random) -> str:
    n, amount = rng.choice(FIRST_NAMES), _money(rng, 4, 80)
    return rng.choice(
        [
            f"I've sent you {amount} for the tickets",
            f"Bank transfer done, should be there in a bit. Ref is {rng.choice(['pizza', 'bills', 'rent', 'gas'])}",
            f"Did you get the refund from {rng.choice(['Ryanair', 'the landlord', 'Currys', 'the council'])} in the end?",
            f"My bank card got declined at {rng.choice(PLACES)} lol, can you pay and I'll send it back",
            f"Netflix went up again, shall we split it? {amount} each",
            f"Finally did my tax return, owe them {amount} {rng.choice(['ugh', '😭', 'not too bad', ''])}".strip(),
            f"The council tax bill came, I'll pay it {rng.choice(['friday', 'tomorrow', 'on payday'])}",
            f"{n} owes me {amount} from the taxi",
            "Got a free coffee with my loyalty card haha",
            f"They're doing an offer on {rng.choice(FOODS)} at {rng.choice(PLACES)}, 2 for 1 if you want to go",
            f"Can you claim the train tickets on expenses? I paid {amount}",
            f"I won {amount} on the lottery lol. Drinks on me",
            f"the delivery guy left a card, I'll collect it from the depot {rng.choice(['tomorrow', 'on sat'])}",
            "Call me when you can, need to ask about the deposit",
        ]
    )


def ham_work_school(rng: random.Random) -> str:
    n = rng.choice(FIRST_NAMES)
    return rng.choice(
        [
            f"Meeting moved to {rng.choice(TIMES)}, same room",
            f"Can you send me the slides before {rng.choice(TIMES)}?",
            f"{n} is off sick today so I'm covering her shift",
            f"Just finished the exam, think it went ok?? {rng.choice(EMOJI_HAM)}",
            "Is the assignment due friday or monday",
            "Boss said we can leave early today, free pizza in the kitchen too",
            f"Reminder: team lunch {rng.choice(['tomorrow', 'on thurs', 'friday'])}, reply in the group if you're coming",
            f"Got the job!!! Start on {rng.choice(['monday', 'the 3rd', 'next week'])} {rng.choice(EMOJI_HAM)}",
            f"interview went well I think, they said they'll call by {rng.choice(['friday', 'next week'])}",
            f"Urgent: client call moved to {rng.choice(TIMES)}, can you dial in?",
            f"Won the pitch!! {n} is buying drinks",
            f"library closes at {rng.choice(TIMES)} today fyi",
            "Did you submit the timesheet? Payroll needs it today",
        ]
    )


def ham_chat(rng: random.Random) -> str:
    n = rng.choice(FIRST_NAMES)
    return rng.choice(
        [
            f"Haha that's brilliant {rng.choice(EMOJI_HAM)}",
            f"omg did you see {rng.choice(['the match', 'the final', 'bake off', 'the news', 'that video'])}",
            "Ok cool see you then",
            "I'm so tired, going to bed early",
            f"Happy birthday {n}!! Have the best day",
            "Congrats on the new place! When's the housewarming?",
            "Thanks for tonight, had such a good time",
            f"{n} just told me the news, amazing!!",
            f"sorry missed your call, {rng.choice(['was driving', 'in the shower', 'at the gym', 'phone was on silent'])}",
            f"We won the pub quiz!! {rng.choice(EMOJI_HAM)}",
            "Weather is awful here, hope it's better there",
            f"Did you watch the new season of {rng.choice(['Severance', 'The Bear', 'Bluey', 'Slow Horses'])}? no spoilers pls",
            "that's a great offer tbh, I'd take it",
            f"Can't wait for {rng.choice(['the holiday', 'saturday', 'the gig', 'christmas'])} {rng.choice(EMOJI_HAM)}",
            "Good luck today, you've got this",
            f"lol I'm dying {rng.choice(EMOJI_HAM)}",
            f"Still at {rng.choice(PLACES)}, text me if you need anything",
        ]
    )


REAL_DOMAINS = {
    "Royal Mail": "royalmail.com",
    "Evri": "evri.com",
    "DPD": "dpd.co.uk",
    "UPS": "ups.com",
    "DHL": "dhl.com",
    "Amazon Logistics": "amazon.co.uk",
    "Yodel": "yodel.co.uk",
}


def ham_service(rng: random.Random) -> str:
    """Genuine notifications from firms: same brands and words as the scams, no trap in them."""
    carrier = rng.choice(list(REAL_DOMAINS))
    slot = f"{rng.randint(7, 17)}:{rng.choice(['00', '15', '30', '45'])}"
    bank, code = rng.choice(BANKS), _code(rng, 6, string.digits)
    return rng.choice(
        [
            f"{carrier}: your parcel is due today between {slot} and {rng.randint(8, 19)}:00. Track it at {REAL_DOMAINS[carrier]}",
            f"Your {carrier} parcel was delivered to your safe place (porch) at {slot}.",
            f"{bank}: {code} is your one-time code to approve a payment. We will never ask you for it.",
            f"Your {bank} statement is ready to view in the app.",
            f"{bank}: your new card is on its way and should arrive within {rng.randint(3, 7)} working days.",
            f"Reminder: your appointment at {rng.choice(['Riverside Surgery', 'the dental practice', 'Specsavers', 'the hospital'])} is on {rng.choice(['Mon', 'Tue', 'Wed', 'Thu', 'Fri'])} at {slot}. Reply C to cancel",
            f"{rng.choice(STREAMERS)}: thanks for your payment, your plan renews on the {rng.randint(1, 28)}th.",
            f"Your {rng.choice(['Uber', 'Bolt', 'taxi'])} is arriving in {rng.randint(2, 9)} min - {rng.choice(['silver', 'black', 'white'])} {rng.choice(['Prius', 'Corsa', 'Golf'])}",
            f"Your verification code is {code}. Do not share it with anyone.",
            f"{rng.choice(TAX)}: we have received your return. No action is needed.",
            f"Your prescription is ready to collect from {rng.choice(['Boots', 'the pharmacy', 'Lloyds Pharmacy'])}.",
        ]
    )


def ham_favours(rng: random.Random) -> str:
    """Real requests for money and help between people who know each other."""
    n, amount = rng.choice(FIRST_NAMES), _money(rng, 5, 60, cents=False)
    return rng.choice(
        [
            f"Can you send me {amount} for the taxi? Will pay you back tmrw",
            f"Mum can you lend me {amount} till payday pls x",
            f"{n} says can you transfer {amount} for the gift, same account as before",
            f"Sent you {amount} for your half of the rent",
            "Dad my phone screen is cracked again, can I use yours later?",
            f"Lost my phone at the party, using {n}'s. Call me on this one tonight",
            f"Parcel for you came, it's on hold at the post office till {rng.choice(['friday', 'monday'])}",
            f"The bank app keeps logging me out, so annoying. Can you pay {n} back for me?",
            f"Need {amount} for the school trip by {rng.choice(['friday', 'monday'])}, can you sort it?",
        ]
    )


HAM_FAMILIES: list[Callable[[random.Random], str]] = [
    ham_favours,
    ham_plans,
    ham_plans,
    ham_family,
    ham_family,
    ham_money,
    ham_work_school,
    ham_chat,
    ham_chat,
    ham_service,
]

# ----------------------------------------------------------------------------- surface noise
ABBREVIATIONS = {
    "you": "u",
    "your": "ur",
    "tonight": "2nite",
    "tomorrow": "tmrw",
    "please": "pls",
    "are": "r",
    "great": "gr8",
    "to": "2",
    "for": "4",
    "before": "b4",
    "thanks": "thx",
}


def _typo(rng: random.Random, text: str) -> str:
    words = text.split(" ")
    i = rng.randrange(len(words))
    w = words[i]
    if len(w) > 3 and w.isalpha():
        j = rng.randrange(1, len(w) - 1)
        op = rng.choice(["swap", "drop", "double"])
        if op == "swap":
            w = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
        elif op == "drop":
            w = w[:j] + w[j + 1 :]
        else:
            w = w[:j] + w[j] + w[j:]
        words[i] = w
    return " ".join(words)


def add_noise(rng: random.Random, text: str, spam: bool) -> str:
    """Vary the surface: casing, abbreviations, typos, emoji, punctuation."""
    if not spam and rng.random() < 0.35:
        text = " ".join(ABBREVIATIONS.get(w.lower(), w) if rng.random() < 0.5 else w for w in text.split(" "))
    r = rng.random()
    if r < 0.25:
        text = text.lower()
    elif spam and r < 0.35:
        text = text.upper()
    elif not spam and r < 0.28:
        text = text.upper()  # people shout too
    for _ in range(rng.choice([0, 0, 0, 1, 1, 2])):
        text = _typo(rng, text)
    if rng.random() < (0.25 if spam else 0.3):
        emoji = rng.choice(EMOJI_SPAM if spam else EMOJI_HAM)
        text = f"{emoji} {text}" if spam and rng.random() < 0.5 else f"{text} {emoji}"
    if rng.random() < 0.15:
        text = text.rstrip(".!?") + rng.choice(["!!", "!", "...", " ?", "."])
    return text


def generate(n: int, seed: int, spam_share: float = SPAM_SHARE) -> list[tuple[str, str]]:
    """Return ``n`` unique (text, label) rows, shuffled, with ``spam_share`` of them spam."""
    rng = random.Random(seed)
    n_spam = round(n * spam_share)
    rows: dict[str, str] = {}
    for label, families, target in (("spam", SPAM_FAMILIES, n_spam), ("ham", HAM_FAMILIES, n - n_spam)):
        made, tries = 0, 0
        while made < target:
            tries += 1
            if tries > target * 200:
                raise RuntimeError(f"could not make {target} unique {label} messages; add variety")
            text = add_noise(rng, rng.choice(families)(rng), spam=label == "spam")
            text = " ".join(text.split())
            if text not in rows:
                rows[text] = label
                made += 1
    items = list(rows.items())
    rng.shuffle(items)
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2400, help="number of messages")
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    rows = generate(args.n, args.seed)
    with args.out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    print(f"wrote {len(rows)} messages ({sum(lab == 'spam' for _, lab in rows)} spam) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
