"""A stand-in for a judge model: an OpenAI-compatible chat-completions server on 127.0.0.1 (as
moto stands in for S3), so that MLflow's own judge code runs end to end. It rates each metric by
a fixed rule and keeps every request it got."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# the score the stand-in gives each metric, found by the definition the judge's prompt states
SCORES = {"Groundedness": 2, "Relevance": 3, "Coherence": 4, "Similarity": 5}
BROKEN = "Fluency"  # answered with text that is no rating: MLflow's judge gives no score


class JudgeStandIn:
    def __init__(self):
        self.requests: list[dict] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                system = body["messages"][0]["content"]
                stand_in.requests.append(
                    {"path": self.path, "authorization": self.headers["authorization"], **body}
                )
                metric = next((m for m in [*SCORES, BROKEN] if f"{m}: " in system), None)
                rating = (
                    {"result": SCORES[metric], "rationale": "by rule"} if metric in SCORES else None
                )
                content = json.dumps(rating) if rating else "I cannot rate this."
                reply = json.dumps(
                    {
                        "id": "stand-in",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
