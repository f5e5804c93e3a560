# Django's zh_Hans formats leave THOUSAND_SEPARATOR empty, so `intcomma` prints 12345 in the
# default language while English gets 12,345. Mainland business software (and CLDR's zh data)
# groups by thousands with a comma; only the grouping is overridden, the rest stays Django's.
THOUSAND_SEPARATOR = ","
NUMBER_GROUPING = 3
