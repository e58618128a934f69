//! Typed Constant Contact v3 models for SDK users. Field names are the API's
//! (schemas `Customer`, `ContactList`, `ContactResource`,
//! `CustomFieldResource`, `EmailCampaign`, `EmailCampaignActivity`,
//! `BulkEmailCampaignSummary`); every field the model does not name is kept
//! in its `extra` map, so nothing the API sends is lost.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// The connected account (`GET /account/summary`, schema `Customer`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Account {
    /// The account's encoded id (`encoded_account_id`): its stable identity.
    #[serde(default)]
    pub encoded_account_id: Option<String>,
    /// The organization's name.
    #[serde(default)]
    pub organization_name: Option<String>,
    /// The account owner's email address.
    #[serde(default)]
    pub contact_email: Option<String>,
    /// The account owner's phone number.
    #[serde(default)]
    pub contact_phone: Option<String>,
    /// The account owner's first name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// The account owner's last name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// ISO 3166-1 country code.
    #[serde(default)]
    pub country_code: Option<String>,
    /// State code (US).
    #[serde(default)]
    pub state_code: Option<String>,
    /// IANA time zone of the account (`US/Eastern`).
    #[serde(default)]
    pub time_zone_id: Option<String>,
    /// The organization's website.
    #[serde(default)]
    pub website: Option<String>,
    /// Everything else (`organization_phone`, `physical_address`,
    /// `company_logo`, newer fields).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A contact list (schema `ContactList`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ContactList {
    /// The list's id (UUID).
    pub list_id: String,
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
    /// Its description.
    #[serde(default)]
    pub description: Option<String>,
    /// Whether the account marked it a favorite.
    #[serde(default)]
    pub favorite: Option<bool>,
    /// Creation time.
    #[serde(default, deserialize_with = "crate::sources::lenient::opt_time")]
    pub created_at: Option<DateTime<Utc>>,
    /// Last update time.
    #[serde(default, deserialize_with = "crate::sources::lenient::opt_time")]
    pub updated_at: Option<DateTime<Utc>>,
    /// Number of contacts on the list (when the API includes it).
    #[serde(default)]
    pub membership_count: Option<i64>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A contact's email address (schema `EmailAddress`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EmailAddress {
    /// The address.
    pub address: String,
    /// `implicit`, `explicit`, `pending_confirmation`, `unsubscribed`,
    /// `temp_hold` or `not_set`.
    #[serde(default)]
    pub permission_to_send: Option<String>,
    /// When the address was added.
    #[serde(default, deserialize_with = "crate::sources::lenient::opt_time")]
    pub created_at: Option<DateTime<Utc>>,
    /// When the address was last changed.
    #[serde(default, deserialize_with = "crate::sources::lenient::opt_time")]
    pub updated_at: Option<DateTime<Utc>>,
    /// Who opted the address in (`Account` or `Contact`).
    #[serde(default)]
    pub opt_in_source: Option<String>,
    /// When it was opted in.
    #[serde(default, deserialize_with = "crate::sources::lenient::opt_time")]
    pub opt_in_date: Option<DateTime<Utc>>,
    /// Who opted it out (deleted and unsubscribed contacts).
    #[serde(default)]
    pub opt_out_source: Option<String>,
    /// When it was opted out.
    #[serde(default, deserialize_with = "crate::sources::lenient::opt_time")]
    pub opt_out_date: Option<DateTime<Utc>>,
    /// Why, as the contact said.
    #[serde(default)]
    pub opt_out_reason: Option<String>,
    /// `pending`, `confirmed` or `off`.
    #[serde(default)]
    pub confirm_status: Option<String>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One custom field value of a contact (schema `ContactCustomField`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ContactCustomField {
    /// The custom field's id (see [`CustomField`]).
    pub custom_field_id: String,
    /// The value, as text (dates as the account entered them; `null` read
    /// as empty).
    #[serde(default, deserialize_with = "crate::sources::lenient::null_as_default")]
    pub value: String,
}

/// A contact (schema `ContactResource`). `custom_fields` and
/// `list_memberships` are filled when the listing asked for them with
/// `include=` (the source always does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Contact {
    /// The contact's id (UUID).
    pub contact_id: String,
    /// The email address, with its permission and opt-in/opt-out details.
    #[serde(default)]
    pub email_address: Option<EmailAddress>,
    /// First name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// Job title.
    #[serde(default)]
    pub job_title: Option<String>,
    /// Company name.
    #[serde(default)]
    pub company_name: Option<String>,
    /// Birthday month (1-12).
    #[serde(default)]
    pub birthday_month: Option<i64>,
    /// Birthday day (1-31).
    #[serde(default)]
    pub birthday_day: Option<i64>,
    /// Anniversary, as entered (several date formats are allowed).
    #[serde(default)]
    pub anniversary: Option<String>,
    /// Who added the contact (`Account` or `Contact`).
    #[serde(default)]
    pub create_source: Option<String>,
    /// Who last updated it.
    #[serde(default)]
    pub update_source: Option<String>,
    /// Creation time.
    #[serde(default, deserialize_with = "crate::sources::lenient::opt_time")]
    pub created_at: Option<DateTime<Utc>>,
    /// Last update time (what `updated_after` filters on).
    #[serde(default, deserialize_with = "crate::sources::lenient::opt_time")]
    pub updated_at: Option<DateTime<Utc>>,
    /// The day the contact was deleted; set only on deleted contacts
    /// (listed with `status=all` or `status=deleted`).
    #[serde(
        default,
        deserialize_with = "de_opt_date",
        serialize_with = "ser_opt_date"
    )]
    pub deleted_at: Option<NaiveDate>,
    /// Custom field values.
    #[serde(default)]
    pub custom_fields: Vec<ContactCustomField>,
    /// Ids of the lists the contact is a member of.
    #[serde(default)]
    pub list_memberships: Vec<String>,
    /// Everything else (`taggings`, `phone_numbers`, `street_addresses`,
    /// `notes` when included, newer fields).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Contact {
    /// True for a deleted contact.
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }

    /// The email address, if the contact has one.
    pub fn email(&self) -> Option<&str> {
        self.email_address.as_ref().map(|e| e.address.as_str())
    }

    /// The value of the custom field `custom_field_id`, if set.
    pub fn custom_field(&self, custom_field_id: &str) -> Option<&str> {
        self.custom_fields
            .iter()
            .find(|f| f.custom_field_id == custom_field_id)
            .map(|f| f.value.as_str())
    }
}

/// A custom field definition (`GET /contact_custom_fields`, schema
/// `CustomFieldResource`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CustomField {
    /// The field's id (UUID), as contacts reference it.
    pub custom_field_id: String,
    /// The label shown in the UI.
    #[serde(default)]
    pub label: Option<String>,
    /// The unique name (the label with blanks as underscores).
    #[serde(default)]
    pub name: Option<String>,
    /// `string` or `date`.
    #[serde(rename = "type", default)]
    pub field_type: Option<String>,
    /// Creation time.
    #[serde(default, deserialize_with = "crate::sources::lenient::opt_time")]
    pub created_at: Option<DateTime<Utc>>,
    /// Last update time.
    #[serde(default, deserialize_with = "crate::sources::lenient::opt_time")]
    pub updated_at: Option<DateTime<Utc>>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A campaign activity's id and role within its campaign (schema
/// `ActivityReference`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ActivityReference {
    /// The activity's id (UUID).
    pub campaign_activity_id: String,
    /// `primary_email`, `permalink` or `resend`.
    #[serde(default)]
    pub role: Option<String>,
}

/// An email campaign (`GET /emails` lists them without activities;
/// `GET /emails/{campaign_id}` adds `campaign_activities`; schema
/// `EmailCampaign`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EmailCampaign {
    /// The campaign's id (UUID).
    pub campaign_id: String,
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
    /// `Draft`, `Scheduled`, `Executing`, `Done`, `Error` or `Removed` (a
    /// campaign the user deleted).
    #[serde(default)]
    pub current_status: Option<String>,
    /// The campaign type (`Newsletter`, `Custom Code Email`, …).
    #[serde(rename = "type", default)]
    pub campaign_type: Option<String>,
    /// The numeric code of the type.
    #[serde(default)]
    pub type_code: Option<i64>,
    /// Creation time.
    #[serde(default, deserialize_with = "crate::sources::lenient::opt_time")]
    pub created_at: Option<DateTime<Utc>>,
    /// Last update time (what `after_date`/`before_date` filter on).
    #[serde(default, deserialize_with = "crate::sources::lenient::opt_time")]
    pub updated_at: Option<DateTime<Utc>>,
    /// The campaign's activities (only from `GET /emails/{campaign_id}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub campaign_activities: Vec<ActivityReference>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl EmailCampaign {
    /// True for a campaign the user deleted (`current_status` `Removed`).
    pub fn is_removed(&self) -> bool {
        self.current_status
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("removed"))
    }
}

/// An email campaign activity: the email's content, sender and recipients
/// (`GET /emails/activities/{campaign_activity_id}`, schema
/// `EmailCampaignActivity`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CampaignActivity {
    /// The activity's id (UUID).
    pub campaign_activity_id: String,
    /// The campaign it belongs to.
    #[serde(default)]
    pub campaign_id: Option<String>,
    /// `primary_email`, `permalink` or `resend`.
    #[serde(default)]
    pub role: Option<String>,
    /// `DRAFT`, `SCHEDULED`, `EXECUTING`, `DONE`, `ERROR` or `REMOVED`.
    #[serde(default)]
    pub current_status: Option<String>,
    /// The email format (1-5).
    #[serde(default)]
    pub format_type: Option<i64>,
    /// The lists it is sent to.
    #[serde(default)]
    pub contact_list_ids: Vec<String>,
    /// The segment it is sent to (at most one).
    #[serde(default)]
    pub segment_ids: Vec<i64>,
    /// "From" address.
    #[serde(default)]
    pub from_email: Option<String>,
    /// "From" name.
    #[serde(default)]
    pub from_name: Option<String>,
    /// "Reply to" address.
    #[serde(default)]
    pub reply_to_email: Option<String>,
    /// Subject line.
    #[serde(default)]
    pub subject: Option<String>,
    /// Preheader text.
    #[serde(default)]
    pub preheader: Option<String>,
    /// The template the email is based on.
    #[serde(default)]
    pub template_id: Option<String>,
    /// The public web version's address (once sent).
    #[serde(default)]
    pub permalink_url: Option<String>,
    /// HTML content (custom code emails, when included).
    #[serde(default)]
    pub html_content: Option<String>,
    /// Everything else (`physical_address_in_footer`,
    /// `document_properties`, newer fields).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Unique counts of a campaign's tracked activities (schema
/// `UniqueEmailCounts`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UniqueCounts {
    /// Unique sends.
    #[serde(default)]
    pub sends: i64,
    /// Unique opens.
    #[serde(default)]
    pub opens: i64,
    /// Unique clicks.
    #[serde(default)]
    pub clicks: i64,
    /// Unique forwards.
    #[serde(default)]
    pub forwards: i64,
    /// Unique opt-outs (unsubscribes).
    #[serde(default)]
    pub optouts: i64,
    /// Unique abuse (spam) reports.
    #[serde(default)]
    pub abuse: i64,
    /// Unique bounces.
    #[serde(default)]
    pub bounces: i64,
    /// Unique non-opens.
    #[serde(default)]
    pub not_opened: i64,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A bulk email campaign's performance summary
/// (`GET /reports/summary_reports/email_campaign_summaries`, schema
/// `BulkEmailCampaignSummary`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CampaignSummary {
    /// The campaign's id.
    pub campaign_id: String,
    /// The campaign type.
    #[serde(default)]
    pub campaign_type: Option<String>,
    /// When the campaign was last sent (the listing is sorted by it,
    /// newest first).
    #[serde(default, deserialize_with = "crate::sources::lenient::opt_time")]
    pub last_sent_date: Option<DateTime<Utc>>,
    /// Unique counts: sends, opens, clicks, forwards, opt-outs, abuse,
    /// bounces, non-opens.
    #[serde(default)]
    pub unique_counts: UniqueCounts,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Parses a date the API sends as `YYYY-MM-DD` (or, leniently, a full
/// ISO 8601 date-time, of which the date is kept).
pub(crate) fn parse_date(s: &str) -> Option<NaiveDate> {
    let t = s.trim();
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Some(d);
    }
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|d| d.with_timezone(&Utc).date_naive())
}

fn de_opt_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NaiveDate>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => parse_date(&s)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not a date (YYYY-MM-DD)"))),
    }
}

fn ser_opt_date<S: Serializer>(d: &Option<NaiveDate>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&d.format("%Y-%m-%d").to_string()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn contacts_keep_unknown_fields_and_parse_deleted_dates() {
        let v = json!({
            "contact_id": "c1",
            "email_address": {"address": "a@example.com", "permission_to_send": "implicit"},
            "updated_at": "2016-03-03T10:56:29-05:00",
            "deleted_at": "2016-07-08",
            "custom_fields": [{"custom_field_id": "f1", "value": "x"}],
            "list_memberships": ["l1"],
            "taggings": ["t1"]
        });
        let c: Contact = serde_json::from_value(v).expect("contact");
        assert!(c.is_deleted());
        assert_eq!(c.email(), Some("a@example.com"));
        assert_eq!(c.custom_field("f1"), Some("x"));
        assert_eq!(c.extra["taggings"], json!(["t1"]));
        assert_eq!(
            c.updated_at.map(|t| t.to_rfc3339()),
            Some("2016-03-03T15:56:29+00:00".into())
        );
        let back = serde_json::to_value(&c).expect("json");
        assert_eq!(back["deleted_at"], "2016-07-08");
        assert_eq!(back["taggings"], json!(["t1"]));
        assert!(serde_json::from_value::<Contact>(
            json!({"contact_id": "c", "deleted_at": "July"})
        )
        .is_err());
    }
}
