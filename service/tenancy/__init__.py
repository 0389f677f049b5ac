"""Who is asking: per-user API keys (keys), the identity a request carries (identity), and
what a key may do and hold (quotas).

The pattern for anything a key makes (jobs now; datasets, studies later):
- an `owner` column, `mapped_column(ForeignKey("api_keys.id"))`, nullable: None means the
  admin token made it (or it was made before keys existed), and only admins see it;
- writes set it from `Identity.owner`; reads filter with `only_visible(statement, column,
  identity)` (or compare with `Identity.can_see`), and a row another key owns is answered
  as not found (404), never as forbidden, so ids do not leak;
- routes get the identity from service/api/deps.py: `IdentityDep` (any valid key: read),
  `TrainerDep` (the `train` scope: make, change, delete) or `AdminDep`.
"""
