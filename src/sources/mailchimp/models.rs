//! Typed Mailchimp models for SDK users. Known fields are typed; every other
//! field the API sends is kept in `extra`, so nothing is lost and a newer API
//! version never breaks decoding. `_links` (hypermedia links on every
//! object) are dropped.
//!
//! Mailchimp sends `""` for a time that is not set (an unsent campaign's
//! `send_time`, a member who never confirmed an opt-in): such times decode
//! as `None`.

use chrono::{DateTime, Utc};
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Times as Mailchimp sends them: ISO 8601 with an offset, `""` or `null`
/// when unset.
pub(crate) mod opt_time {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let s: Option<std::borrow::Cow<'de, str>> = Option::deserialize(d)?;
        match s.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(s) => parse(s)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not an ISO 8601 time"))),
        }
    }

    pub fn serialize<S: serde::Serializer>(
        t: &Option<DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
            None => s.serialize_none(),
        }
    }

    /// RFC 3339, or the same without an offset (taken as UTC).
    pub fn parse(s: &str) -> Option<DateTime<Utc>> {
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Some(t.with_timezone(&Utc));
        }
        chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
            .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S"))
            .ok()
            .map(|t| t.and_utc())
    }
}

/// A string that may arrive as `null`.
fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
}

/// The account behind the token (`GET /`, the API root).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Account {
    /// The account's id.
    pub account_id: String,
    /// The login id of the user the token belongs to.
    #[serde(default)]
    pub login_id: Option<String>,
    /// The account's name.
    #[serde(default)]
    pub account_name: Option<String>,
    /// The account's email address.
    #[serde(default)]
    pub email: Option<String>,
    /// The user's first name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// The user's last name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// The user's username.
    #[serde(default)]
    pub username: Option<String>,
    /// The user's role in the account (`owner`, `admin`, …).
    #[serde(default)]
    pub role: Option<String>,
    /// When the account was created.
    #[serde(default, with = "opt_time")]
    pub member_since: Option<DateTime<Utc>>,
    /// `monthly`, `pay_as_you_go` or `forever_free`.
    #[serde(default)]
    pub pricing_plan_type: Option<String>,
    /// The account's time zone.
    #[serde(default)]
    pub account_timezone: Option<String>,
    /// Subscribers across all audiences.
    #[serde(default)]
    pub total_subscribers: Option<u64>,
    #[serde(rename = "_links", default, skip_serializing)]
    links: IgnoredAny,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An audience (a list, `GET /lists`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Audience {
    /// The audience id (`list_id` elsewhere).
    pub id: String,
    /// The id used in the Mailchimp web app.
    #[serde(default)]
    pub web_id: Option<u64>,
    /// Its name.
    pub name: String,
    /// When it was created.
    #[serde(default, with = "opt_time")]
    pub date_created: Option<DateTime<Utc>>,
    /// `pub` or `prv`.
    #[serde(default)]
    pub visibility: Option<String>,
    /// Audience rating, 0 to 5.
    #[serde(default)]
    pub list_rating: Option<u32>,
    /// Whether new subscribers must confirm.
    #[serde(default)]
    pub double_optin: Option<bool>,
    /// The permission reminder shown in emails.
    #[serde(default)]
    pub permission_reminder: Option<String>,
    /// Counts and rates.
    #[serde(default)]
    pub stats: Option<AudienceStats>,
    /// The audience's postal contact (`contact`).
    #[serde(default)]
    pub contact: Option<Value>,
    /// Defaults for campaigns sent to it.
    #[serde(default)]
    pub campaign_defaults: Option<Value>,
    #[serde(rename = "_links", default, skip_serializing)]
    links: IgnoredAny,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An audience's counts and rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AudienceStats {
    /// Subscribed members.
    #[serde(default)]
    pub member_count: Option<u64>,
    /// Unsubscribed members.
    #[serde(default)]
    pub unsubscribe_count: Option<u64>,
    /// Cleaned (bouncing) members.
    #[serde(default)]
    pub cleaned_count: Option<u64>,
    /// Campaigns sent to the audience.
    #[serde(default)]
    pub campaign_count: Option<u64>,
    /// When the last campaign was sent.
    #[serde(default, with = "opt_time")]
    pub campaign_last_sent: Option<DateTime<Utc>>,
    /// Average open rate.
    #[serde(default)]
    pub open_rate: Option<f64>,
    /// Average click rate.
    #[serde(default)]
    pub click_rate: Option<f64>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A member (contact) of an audience (`GET /lists/{list_id}/members`).
///
/// Members with status `archived` or `cleaned` are listed like the others;
/// a member deleted permanently is no longer listed at all, so a sync never
/// sees that deletion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Member {
    /// The subscriber hash: the MD5 of the lower-cased email address.
    pub id: String,
    /// The audience it belongs to.
    #[serde(default)]
    pub list_id: Option<String>,
    /// Email address.
    pub email_address: String,
    /// An id of the email address across all audiences.
    #[serde(default)]
    pub unique_email_id: Option<String>,
    /// The contact's id in newer Mailchimp APIs.
    #[serde(default)]
    pub contact_id: Option<String>,
    /// The contact's name, when known.
    #[serde(default, deserialize_with = "opt_string")]
    pub full_name: Option<String>,
    /// The id used in the Mailchimp web app.
    #[serde(default)]
    pub web_id: Option<u64>,
    /// `html` or `text`.
    #[serde(default)]
    pub email_type: Option<String>,
    /// `subscribed`, `unsubscribed`, `cleaned`, `pending`, `transactional`
    /// or `archived`.
    pub status: String,
    /// Why the member unsubscribed, if they did.
    #[serde(default, deserialize_with = "opt_string")]
    pub unsubscribe_reason: Option<String>,
    /// The audience's merge fields (`FNAME`, `ADDRESS`, …) as sent: text,
    /// numbers, an address object, or `""` when blank.
    #[serde(default)]
    pub merge_fields: Map<String, Value>,
    /// Interest (group) ids and whether the member has them.
    #[serde(default)]
    pub interests: Option<Map<String, Value>>,
    /// Open and click rates.
    #[serde(default)]
    pub stats: Option<MemberStats>,
    /// IP address the member signed up from.
    #[serde(default)]
    pub ip_signup: Option<String>,
    /// When the member signed up.
    #[serde(default, with = "opt_time")]
    pub timestamp_signup: Option<DateTime<Utc>>,
    /// IP address the member confirmed their opt-in from.
    #[serde(default)]
    pub ip_opt: Option<String>,
    /// When the member confirmed their opt-in.
    #[serde(default, with = "opt_time")]
    pub timestamp_opt: Option<DateTime<Utc>>,
    /// Star rating, 1 to 5.
    #[serde(default)]
    pub member_rating: Option<u32>,
    /// When the member's information last changed: the incremental cursor.
    #[serde(default, with = "opt_time")]
    pub last_changed: Option<DateTime<Utc>>,
    /// Language, when known.
    #[serde(default)]
    pub language: Option<String>,
    /// VIP member.
    #[serde(default)]
    pub vip: Option<bool>,
    /// Email client the member used last.
    #[serde(default)]
    pub email_client: Option<String>,
    /// Where the member is, when known.
    #[serde(default)]
    pub location: Option<Value>,
    /// How the member was added (`API - Generic`, `Import`, …).
    #[serde(default)]
    pub source: Option<String>,
    /// Number of tags.
    #[serde(default)]
    pub tags_count: Option<u64>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(rename = "_links", default, skip_serializing)]
    links: IgnoredAny,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A member's tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Tag {
    /// Tag id.
    pub id: u64,
    /// Tag name.
    pub name: String,
}

/// A member's engagement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MemberStats {
    /// Average open rate.
    #[serde(default)]
    pub avg_open_rate: Option<f64>,
    /// Average click rate.
    #[serde(default)]
    pub avg_click_rate: Option<f64>,
    /// Every other field (`ecommerce_data`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A merge field of an audience (`GET /lists/{list_id}/merge-fields`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MergeField {
    /// Its id.
    pub merge_id: u64,
    /// Its tag, the key in a member's `merge_fields` (`FNAME`).
    pub tag: String,
    /// Its label.
    #[serde(default)]
    pub name: Option<String>,
    /// `text`, `number`, `address`, `phone`, `date`, `url`, `imageurl`,
    /// `radio`, `dropdown`, `birthday` or `zip`.
    #[serde(rename = "type")]
    pub field_type: String,
    /// Whether it is required.
    #[serde(default)]
    pub required: Option<bool>,
    /// Its default value.
    #[serde(default)]
    pub default_value: Option<String>,
    /// Whether subscribers see it.
    #[serde(default)]
    pub public: Option<bool>,
    /// Its position on forms.
    #[serde(default)]
    pub display_order: Option<i64>,
    /// Choices, date format, phone format, …
    #[serde(default)]
    pub options: Option<Value>,
    /// The audience.
    #[serde(default)]
    pub list_id: Option<String>,
    #[serde(rename = "_links", default, skip_serializing)]
    links: IgnoredAny,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A campaign (`GET /campaigns`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Campaign {
    /// Campaign id.
    pub id: String,
    /// The id used in the Mailchimp web app.
    #[serde(default)]
    pub web_id: Option<u64>,
    /// The campaign this one was created from (resends).
    #[serde(default)]
    pub parent_campaign_id: Option<String>,
    /// `regular`, `plaintext`, `absplit`, `rss` or `variate`.
    #[serde(rename = "type", default)]
    pub campaign_type: Option<String>,
    /// When it was created: the incremental cursor.
    #[serde(default, with = "opt_time")]
    pub create_time: Option<DateTime<Utc>>,
    /// `save`, `paused`, `schedule`, `sending`, `sent`, `canceled`, …
    pub status: String,
    /// Emails sent.
    #[serde(default)]
    pub emails_sent: Option<u64>,
    /// When it was sent (`None` until it is).
    #[serde(default, with = "opt_time")]
    pub send_time: Option<DateTime<Utc>>,
    /// `template`, `html`, `url` or `multichannel`.
    #[serde(default)]
    pub content_type: Option<String>,
    /// The archive link.
    #[serde(default)]
    pub archive_url: Option<String>,
    /// The audience and segment it goes to.
    #[serde(default)]
    pub recipients: Option<CampaignRecipients>,
    /// Subject, title, sender.
    #[serde(default)]
    pub settings: Option<CampaignSettings>,
    /// Headline figures, once sent.
    #[serde(default)]
    pub report_summary: Option<ReportSummary>,
    /// Tracking options.
    #[serde(default)]
    pub tracking: Option<Value>,
    #[serde(rename = "_links", default, skip_serializing)]
    links: IgnoredAny,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Who a campaign (or automation email) goes to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CampaignRecipients {
    /// The audience.
    #[serde(default)]
    pub list_id: Option<String>,
    /// The audience's name.
    #[serde(default)]
    pub list_name: Option<String>,
    /// A description of the segment.
    #[serde(default)]
    pub segment_text: Option<String>,
    /// How many it goes to.
    #[serde(default)]
    pub recipient_count: Option<u64>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A campaign's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CampaignSettings {
    /// Subject line.
    #[serde(default)]
    pub subject_line: Option<String>,
    /// Preview text.
    #[serde(default)]
    pub preview_text: Option<String>,
    /// Internal title.
    #[serde(default)]
    pub title: Option<String>,
    /// Sender name.
    #[serde(default)]
    pub from_name: Option<String>,
    /// Reply-to address.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The headline figures of a sent campaign or automation email.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReportSummary {
    /// Opens.
    #[serde(default)]
    pub opens: Option<u64>,
    /// Unique opens.
    #[serde(default)]
    pub unique_opens: Option<u64>,
    /// Open rate.
    #[serde(default)]
    pub open_rate: Option<f64>,
    /// Clicks.
    #[serde(default)]
    pub clicks: Option<u64>,
    /// Subscribers who clicked.
    #[serde(default)]
    pub subscriber_clicks: Option<u64>,
    /// Click rate.
    #[serde(default)]
    pub click_rate: Option<f64>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A campaign's report (`GET /reports`): its performance. Opens, clicks,
/// bounces and unsubscribes keep changing for weeks after the send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CampaignReport {
    /// The campaign id.
    pub id: String,
    /// The campaign's title.
    #[serde(default)]
    pub campaign_title: Option<String>,
    /// The campaign's type.
    #[serde(rename = "type", default)]
    pub campaign_type: Option<String>,
    /// The audience.
    #[serde(default)]
    pub list_id: Option<String>,
    /// The audience's name.
    #[serde(default)]
    pub list_name: Option<String>,
    /// Subject line.
    #[serde(default)]
    pub subject_line: Option<String>,
    /// When it was sent: the incremental cursor.
    #[serde(default, with = "opt_time")]
    pub send_time: Option<DateTime<Utc>>,
    /// Emails sent.
    #[serde(default)]
    pub emails_sent: Option<u64>,
    /// Abuse (spam) reports.
    #[serde(default)]
    pub abuse_reports: Option<u64>,
    /// Unsubscribes.
    #[serde(default)]
    pub unsubscribed: Option<u64>,
    /// Bounces.
    #[serde(default)]
    pub bounces: Option<Bounces>,
    /// Opens.
    #[serde(default)]
    pub opens: Option<Opens>,
    /// Clicks.
    #[serde(default)]
    pub clicks: Option<Clicks>,
    /// Forwards.
    #[serde(default)]
    pub forwards: Option<Value>,
    /// The audience's average rates.
    #[serde(default)]
    pub list_stats: Option<Value>,
    /// The industry's average rates.
    #[serde(default)]
    pub industry_stats: Option<Value>,
    #[serde(rename = "_links", default, skip_serializing)]
    links: IgnoredAny,
    /// Every other field (`ecommerce`, `timeseries`, `delivery_status`, …).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A report's bounces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Bounces {
    /// Hard bounces.
    #[serde(default)]
    pub hard_bounces: Option<u64>,
    /// Soft bounces.
    #[serde(default)]
    pub soft_bounces: Option<u64>,
    /// Syntax errors.
    #[serde(default)]
    pub syntax_errors: Option<u64>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A report's opens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Opens {
    /// All opens.
    #[serde(default)]
    pub opens_total: Option<u64>,
    /// Unique opens.
    #[serde(default)]
    pub unique_opens: Option<u64>,
    /// Open rate (unique opens / delivered).
    #[serde(default)]
    pub open_rate: Option<f64>,
    /// The last open.
    #[serde(default, with = "opt_time")]
    pub last_open: Option<DateTime<Utc>>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A report's clicks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Clicks {
    /// All clicks.
    #[serde(default)]
    pub clicks_total: Option<u64>,
    /// Unique clicks.
    #[serde(default)]
    pub unique_clicks: Option<u64>,
    /// Subscribers who clicked.
    #[serde(default)]
    pub unique_subscriber_clicks: Option<u64>,
    /// Click rate.
    #[serde(default)]
    pub click_rate: Option<f64>,
    /// The last click.
    #[serde(default, with = "opt_time")]
    pub last_click: Option<DateTime<Utc>>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A classic automation (workflow, `GET /automations`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Automation {
    /// Workflow id.
    pub id: String,
    /// When it was created.
    #[serde(default, with = "opt_time")]
    pub create_time: Option<DateTime<Utc>>,
    /// When it was started.
    #[serde(default, with = "opt_time")]
    pub start_time: Option<DateTime<Utc>>,
    /// `save`, `paused` or `sending`.
    pub status: String,
    /// Emails sent.
    #[serde(default)]
    pub emails_sent: Option<u64>,
    /// Who it goes to.
    #[serde(default)]
    pub recipients: Option<CampaignRecipients>,
    /// Title, sender, …
    #[serde(default)]
    pub settings: Option<Value>,
    /// Trigger type and settings.
    #[serde(default)]
    pub trigger_settings: Option<Value>,
    /// Headline figures.
    #[serde(default)]
    pub report_summary: Option<ReportSummary>,
    #[serde(rename = "_links", default, skip_serializing)]
    links: IgnoredAny,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One email of an automation (`GET /automations/{workflow_id}/emails`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AutomationEmail {
    /// Email id.
    pub id: String,
    /// The automation it belongs to.
    #[serde(default)]
    pub workflow_id: Option<String>,
    /// The id used in the Mailchimp web app.
    #[serde(default)]
    pub web_id: Option<u64>,
    /// Position in the workflow.
    #[serde(default)]
    pub position: Option<i64>,
    /// When it goes out after the trigger.
    #[serde(default)]
    pub delay: Option<Value>,
    /// When it was created.
    #[serde(default, with = "opt_time")]
    pub create_time: Option<DateTime<Utc>>,
    /// When it was started.
    #[serde(default, with = "opt_time")]
    pub start_time: Option<DateTime<Utc>>,
    /// When it was last sent.
    #[serde(default, with = "opt_time")]
    pub send_time: Option<DateTime<Utc>>,
    /// `save`, `paused` or `sending`.
    pub status: String,
    /// Emails sent.
    #[serde(default)]
    pub emails_sent: Option<u64>,
    /// Who it goes to.
    #[serde(default)]
    pub recipients: Option<CampaignRecipients>,
    /// Subject, title, sender.
    #[serde(default)]
    pub settings: Option<CampaignSettings>,
    /// Headline figures.
    #[serde(default)]
    pub report_summary: Option<ReportSummary>,
    #[serde(rename = "_links", default, skip_serializing)]
    links: IgnoredAny,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What the legacy OAuth metadata endpoint says about a token
/// (`GET https://login.mailchimp.com/oauth2/metadata`): the account's data
/// centre and API host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OAuthMetadata {
    /// The data centre (`us6`).
    pub dc: String,
    /// The API host of that data centre (`https://us6.api.mailchimp.com`).
    pub api_endpoint: String,
    /// The user's role.
    #[serde(default)]
    pub role: Option<String>,
    /// The account's name.
    #[serde(default)]
    pub accountname: Option<String>,
    /// The user's id.
    #[serde(default)]
    pub user_id: Option<u64>,
    /// The login page.
    #[serde(default)]
    pub login_url: Option<String>,
    /// Every other field (`login`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn blank_times_are_none_and_links_are_dropped() {
        let c: Campaign = serde_json::from_value(json!({
            "id": "c1", "status": "save", "create_time": "2024-03-01T10:00:00+00:00",
            "send_time": "", "_links": [{"rel": "self"}], "new_field": 3
        }))
        .expect("decode");
        assert_eq!(c.send_time, None);
        assert_eq!(
            c.create_time.map(|t| t.to_rfc3339()),
            Some("2024-03-01T10:00:00+00:00".into())
        );
        assert_eq!(c.extra.get("new_field"), Some(&json!(3)));
        let back = serde_json::to_value(&c).expect("encode");
        assert!(back.get("_links").is_none(), "{back}");
        assert_eq!(back["create_time"], json!("2024-03-01T10:00:00Z"));
        assert_eq!(back["send_time"], Value::Null);
        assert_eq!(back["new_field"], json!(3));
        let bad = serde_json::from_value::<Campaign>(json!({
            "id": "c1", "status": "save", "create_time": "yesterday"
        }));
        assert!(bad.is_err());
    }
}
