"""Where the tests find the machine's services; also read by scripts/check_test_prerequisites.py,
which must not import the test suite (or skewless) to say what is missing."""

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
