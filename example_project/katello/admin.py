from django.contrib import admin

from katello import models

for model in (
    models.Organization, models.Product, models.Subscription, models.Pool, models.ActivationKey, models.Erratum,
    models.ContentView, models.ContentViewVersion, models.Host,
):  # fmt: skip
    admin.site.register(model)
