{"signature": "dWvAzuIbMVkzk5vOVl+djnmU7q4cdDBlHvfAHC7vkt2Z5ttcyYGOO0BVwwhzIzHcnfQSe7HRh2YtEu03uIyFAg==", "key_id": "35e5b1f9fee890ca"}
