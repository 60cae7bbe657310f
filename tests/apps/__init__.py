"""Apps of Keel's users, as a team would write them (KEEL_APP), for tests/test_user_apps.py: a shop, the
same shop redeployed without one of its tools, and apps Keel must refuse at startup."""
