{"signature": "sPOXC/k0dG/wxjESrxmADZFmldVJrRWW2ysHP9hshchexhDZZpw3+3oZ1QySV/znMmtVEh+D5fAiMItAYH4UAA==", "key_id": "35e5b1f9fee890ca"}
