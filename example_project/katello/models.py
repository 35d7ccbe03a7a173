"""Organizations, hosts, products, subscriptions and pools, content views and errata: enough state
that each of Katello's event-driven behaviours has something observable to change."""

from __future__ import annotations

from django.db import models


class Organization(models.Model):
    """An organization, Candlepin's *owner*: its key is the organization's label, as in Katello."""

    #: Content access modes Candlepin knows: "entitlement" (subscriptions attached per host) and
    #: "org_environment" (simple content access); blank until Candlepin has told us.
    ENTITLEMENT, SIMPLE_CONTENT_ACCESS = "entitlement", "org_environment"

    name = models.CharField(max_length=200, unique=True)
    label = models.CharField(max_length=200, unique=True, help_text="Candlepin's owner key.")
    candlepin_id = models.CharField(
        max_length=64, unique=True, null=True, blank=True, help_text="Candlepin's owner id."
    )
    #: Set by ``owner_content_access_mode.modified``.
    content_access_mode = models.CharField(max_length=32, blank=True)

    def __str__(self) -> str:
        return self.name


class Product(models.Model):
    name = models.CharField(max_length=200, unique=True)

    def __str__(self) -> str:
        return self.name


class Subscription(models.Model):
    name = models.CharField(max_length=200, unique=True)
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="subscriptions")
    #: Candlepin's id of the subscription (what ``pool.created`` names as ``subscriptionId``).
    candlepin_id = models.CharField(max_length=64, unique=True, null=True, blank=True)

    def __str__(self) -> str:
        return self.name


class Pool(models.Model):
    """A subscription pool as imported from Candlepin (``pool.created``).

    From the message: its id (``entityId``), its product's name (``targetName``), its
    subscription's id (``eventData.subscriptionId``) and its owner (``ownerId``). The figures
    only Candlepin's API gives (quantity, consumed) come through ``katello.candlepin_api``, and
    stay None (unknown) when it cannot tell: never made up.
    """

    candlepin_id = models.CharField(max_length=64, unique=True)
    organization = models.ForeignKey(Organization, null=True, blank=True, on_delete=models.SET_NULL)
    subscription = models.ForeignKey(Subscription, null=True, blank=True, on_delete=models.SET_NULL)
    #: ``eventData.subscriptionId`` as Candlepin sent it, known locally or not.
    candlepin_subscription_id = models.CharField(max_length=64, blank=True)
    product_name = models.CharField(max_length=200, blank=True)
    quantity = models.IntegerField(null=True, blank=True, help_text="From Candlepin's API; None: unknown.")
    consumed = models.IntegerField(null=True, blank=True, help_text="From Candlepin's API; None: unknown.")
    imported_at = models.DateTimeField(auto_now=True)
    #: Set by ``pool.deleted``. Candlepin never reuses a pool id, so a deleted pool stays deleted
    #: even when a late or redelivered message about it arrives afterwards.
    deleted_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.candlepin_id


class ActivationKey(models.Model):
    name = models.CharField(max_length=200, unique=True)
    subscription = models.ForeignKey(Subscription, null=True, blank=True, on_delete=models.SET_NULL)

    def __str__(self) -> str:
        return self.name


class Erratum(models.Model):
    errata_id = models.CharField(max_length=64, unique=True)
    title = models.CharField(max_length=200, blank=True)
    #: Packages the erratum updates, as "name-version".
    packages = models.JSONField(default=list)

    def __str__(self) -> str:
        return self.errata_id


class ContentView(models.Model):
    name = models.CharField(max_length=200, unique=True)
    composite = models.BooleanField(default=False)
    auto_publish = models.BooleanField(default=False, help_text="Composites only: publish when a component does.")
    components = models.ManyToManyField("self", symmetrical=False, related_name="composites", blank=True)

    def __str__(self) -> str:
        return self.name


class ContentViewVersion(models.Model):
    content_view = models.ForeignKey(ContentView, on_delete=models.CASCADE, related_name="versions")
    number = models.IntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = (models.UniqueConstraint(fields=["content_view", "number"], name="katello_cv_version_unique"),)

    def __str__(self) -> str:
        return f"{self.content_view} {self.number}"


class Host(models.Model):
    name = models.CharField(max_length=200, unique=True)
    consumer_uuid = models.CharField(max_length=64, unique=True)
    activation_key = models.ForeignKey(ActivationKey, null=True, blank=True, on_delete=models.SET_NULL)
    content_view = models.ForeignKey(ContentView, null=True, blank=True, on_delete=models.SET_NULL)
    #: Installed packages, as "name-version".
    installed_packages = models.JSONField(default=list)
    applicable_errata = models.ManyToManyField(Erratum, blank=True, related_name="applicable_hosts")
    applicability_updated_at = models.DateTimeField(null=True, blank=True)
    pools = models.ManyToManyField(Pool, blank=True, related_name="hosts", help_text="Entitlements.")
    subscription_status = models.CharField(max_length=32, default="unknown")
    subscription_reasons = models.JSONField(default=list)
    purpose_status = models.CharField(max_length=32, default="unknown")
    purpose_role_status = models.CharField(max_length=32, blank=True)
    purpose_usage_status = models.CharField(max_length=32, blank=True)
    purpose_sla_status = models.CharField(max_length=32, blank=True)
    purpose_addons_status = models.CharField(max_length=32, blank=True)

    def __str__(self) -> str:
        return self.name
