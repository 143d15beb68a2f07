"""The order itself: its fields, money in cents, and the generator of test orders."""
