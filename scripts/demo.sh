#!/usr/bin/env bash
# `make demo`: a synthetic store end to end — data → matrices → train (MLflow) → register →
# promote → publish (Redis) → serve → a real personalized request over HTTP.
# All state goes to $TAILOR_HOME (default ./.tailor). Run inside the project env (`uv run`).
set -euo pipefail

HOME_DIR="${TAILOR_HOME:-.tailor}"
STORE="$HOME_DIR/data/store"
PORT="${TAILOR_PORT:-8000}"
KEY="${TAILOR_DEMO_KEY:-tailor-dev-key}"
step() { printf '\n\033[1;36m==> %s\033[0m\n' "$*"; }

step "1/6 Synthesize a store (2,000 shoppers, 600 items, 60 days)"
tailor data synth --users 2000 --items 600 --days 60 --seed 7 --out "$STORE"

step "2/6 Validate the event log"
tailor data validate "$STORE"

step "3/6 Train the popularity baseline and ALS; evaluate; log to MLflow; register"
tailor train --model popularity --data "$STORE" --no-register
tailor train --model als --data "$STORE"
tailor promote --alias champion        # the newest registered version becomes the champion

step "4/6 Compare the runs"
tailor runs

step "5/6 Publish the champion to Redis"
tailor publish --model-uri "models:/${TAILOR_MODEL_NAME:-tailor}@champion"   # and the data it was trained on

step "6/6 Serve (background) and ask for a shopper's recommendations"
tailor serve --background --port "$PORT"
USER_ID=$(tailor data sample-user "$STORE")
URL="http://127.0.0.1:$PORT/v1/users/$USER_ID/recommendations?k=5"
echo "GET $URL"
ITEM=$(python -c "
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={'X-API-Key': sys.argv[2]})
body = json.load(urllib.request.urlopen(req, timeout=10))
print(json.dumps(body, indent=2), file=sys.stderr)
print(body['items'][0]['item_id'] if body['items'] else 'ITEM')
" "$URL" "$KEY")

cat <<MSG

Tailor is serving on http://127.0.0.1:$PORT (API docs: http://127.0.0.1:$PORT/schema).
Try next:
  curl -H 'X-API-Key: $KEY' 'http://127.0.0.1:$PORT/v1/users/$USER_ID/recommendations?k=10'
  curl -H 'X-API-Key: $KEY' 'http://127.0.0.1:$PORT/v1/users/new-shopper/recommendations?k=5'
  curl -H 'X-API-Key: $KEY' -H 'Content-Type: application/json' -X POST http://127.0.0.1:$PORT/v1/events \\
       -d '{"user_id": "new-shopper", "item_id": "$ITEM", "event_type": "view"}'
  curl -H 'X-API-Key: $KEY' 'http://127.0.0.1:$PORT/v1/users/new-shopper/recommendations?k=5'   # now because_you_viewed:$ITEM
  curl -H 'X-API-Key: $KEY' 'http://127.0.0.1:$PORT/v1/items/$ITEM/similar?k=5'
  make mlflow-ui        # runs, metrics and plots at http://127.0.0.1:5000
  make stop             # stop the service and the embedded Redis
MSG
