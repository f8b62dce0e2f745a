import requests


def test_rest_predict_versioned(server):
    reply = requests.post(f"{server.rest_url}/v1/models/versioned:predict", json={"instances": [[1, 2, 3, 4]]}, timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"predictions": [[2.0, 4.0, 6.0, 8.0]]}
