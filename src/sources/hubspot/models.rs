//! Typed `HubSpot` models for SDK users. Known fields are typed; every other
//! property stays in `properties`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Any CRM object as the v3 API returns it (`SimplePublicObject`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CrmObject {
    /// The object's id.
    pub id: String,
    /// Its properties as `HubSpot` sends them (strings or null).
    #[serde(default)]
    pub properties: Map<String, Value>,
    /// Creation time (`null` or `""` read as none).
    #[serde(default, deserialize_with = "crate::sources::lenient::opt_time")]
    pub created_at: Option<DateTime<Utc>>,
    /// Last modification time (`null` or `""` read as none).
    #[serde(default, deserialize_with = "crate::sources::lenient::opt_time")]
    pub updated_at: Option<DateTime<Utc>>,
    /// True when archived (in the 90-day recycle bin).
    #[serde(default)]
    pub archived: bool,
    /// When it was archived (`null` or `""` read as none).
    #[serde(default, deserialize_with = "crate::sources::lenient::opt_time")]
    pub archived_at: Option<DateTime<Utc>>,
}

impl CrmObject {
    /// A property as text (`None` for null, missing or blank).
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    fn take(&mut self, name: &str) -> Option<String> {
        match self.properties.remove(name) {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            _ => None,
        }
    }
}

fn parse_f64(s: Option<String>) -> Option<f64> {
    s.and_then(|s| s.trim().parse().ok())
}

fn parse_time(s: Option<String>) -> Option<DateTime<Utc>> {
    let s = s?;
    if let Ok(ms) = s.parse::<i64>() {
        return DateTime::from_timestamp_millis(ms);
    }
    DateTime::parse_from_rfc3339(&s)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

macro_rules! model {
    (
        $(#[$doc:meta])* $name:ident, $object_type:literal {
            $( $(#[$fdoc:meta])* $field:ident : $kind:ident = $prop:literal ),* $(,)?
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[non_exhaustive]
        pub struct $name {
            /// The record id.
            pub id: String,
            $( $(#[$fdoc])* pub $field: model!(@ty $kind), )*
            /// Creation time.
            pub created_at: Option<DateTime<Utc>>,
            /// Last modification time.
            pub updated_at: Option<DateTime<Utc>>,
            /// True when archived.
            pub archived: bool,
            /// Every other property, as `HubSpot` sent it.
            pub properties: Map<String, Value>,
        }

        impl From<CrmObject> for $name {
            fn from(mut o: CrmObject) -> Self {
                $( let $field = model!(@conv $kind, o.take($prop)); )*
                $name {
                    id: o.id,
                    $( $field, )*
                    created_at: o.created_at,
                    updated_at: o.updated_at,
                    archived: o.archived,
                    properties: o.properties,
                }
            }
        }

        impl super::CrmModel for $name {
            const OBJECT_TYPE: &'static str = $object_type;
            const PROPERTIES: &'static [&'static str] = &[$($prop),*];
        }
    };
    (@ty text) => { Option<String> };
    (@ty number) => { Option<f64> };
    (@ty time) => { Option<DateTime<Utc>> };
    (@conv text, $v:expr) => { $v };
    (@conv number, $v:expr) => { parse_f64($v) };
    (@conv time, $v:expr) => { parse_time($v) };
}

model!(
    /// A `HubSpot` contact.
    Contact, "contacts" {
        /// Email address.
        email: text = "email",
        /// First name.
        first_name: text = "firstname",
        /// Last name.
        last_name: text = "lastname",
        /// Phone number.
        phone: text = "phone",
        /// Company name (as typed on the contact).
        company: text = "company",
        /// Lifecycle stage.
        lifecycle_stage: text = "lifecyclestage",
        /// Owner id.
        owner_id: text = "hubspot_owner_id",
    }
);

model!(
    /// A `HubSpot` company.
    Company, "companies" {
        /// Name.
        name: text = "name",
        /// Web domain.
        domain: text = "domain",
        /// Industry.
        industry: text = "industry",
        /// City.
        city: text = "city",
        /// Number of employees.
        number_of_employees: number = "numberofemployees",
        /// Annual revenue.
        annual_revenue: number = "annualrevenue",
        /// Owner id.
        owner_id: text = "hubspot_owner_id",
    }
);

model!(
    /// A `HubSpot` deal.
    Deal, "deals" {
        /// Deal name.
        name: text = "dealname",
        /// Amount.
        amount: number = "amount",
        /// Stage id.
        stage: text = "dealstage",
        /// Pipeline id.
        pipeline: text = "pipeline",
        /// Expected close date.
        close_date: time = "closedate",
        /// Owner id.
        owner_id: text = "hubspot_owner_id",
    }
);

model!(
    /// A `HubSpot` ticket.
    Ticket, "tickets" {
        /// Subject.
        subject: text = "subject",
        /// Body.
        content: text = "content",
        /// Pipeline id.
        pipeline: text = "hs_pipeline",
        /// Stage id.
        stage: text = "hs_pipeline_stage",
        /// Priority.
        priority: text = "hs_ticket_priority",
        /// Owner id.
        owner_id: text = "hubspot_owner_id",
    }
);

/// A CRM owner (`PublicOwner`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Owner {
    /// Owner id.
    pub id: String,
    /// Email.
    #[serde(default)]
    pub email: Option<String>,
    /// First name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// The user id behind the owner.
    #[serde(default)]
    pub user_id: Option<i64>,
    /// `PERSON` or `QUEUE`.
    #[serde(default, rename = "type")]
    pub owner_type: Option<String>,
    /// Creation time.
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    /// Last modification time.
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
    /// True when archived.
    #[serde(default)]
    pub archived: bool,
    /// Teams, as sent.
    #[serde(default)]
    pub teams: Vec<Value>,
}

/// A pipeline stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PipelineStage {
    /// Stage id.
    pub id: String,
    /// Label.
    pub label: String,
    /// Display order.
    #[serde(default)]
    pub display_order: i64,
    /// Stage metadata (`probability`, `isClosed`, `ticketState`…).
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// True when archived.
    #[serde(default)]
    pub archived: bool,
}

/// A deal or ticket pipeline with its stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Pipeline {
    /// Pipeline id.
    pub id: String,
    /// Label.
    pub label: String,
    /// Display order.
    #[serde(default)]
    pub display_order: i64,
    /// Stages.
    #[serde(default)]
    pub stages: Vec<PipelineStage>,
    /// Creation time.
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    /// Last modification time.
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
    /// True when archived.
    #[serde(default)]
    pub archived: bool,
}

/// A property definition from the properties API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PropertyDefinition {
    /// Internal name.
    pub name: String,
    /// Label.
    #[serde(default)]
    pub label: String,
    /// Data type: `string`, `number`, `date`, `datetime`, `enumeration`,
    /// `bool`, `phone_number`, …
    #[serde(rename = "type")]
    pub property_type: String,
    /// UI field type: `text`, `select`, `checkbox`, `booleancheckbox`, …
    #[serde(default)]
    pub field_type: String,
    /// Group.
    #[serde(default)]
    pub group_name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// True when archived.
    #[serde(default)]
    pub archived: bool,
    /// True when `HubSpot` computes the value.
    #[serde(default)]
    pub calculated: bool,
}

/// Who a token belongs to (`GET /oauth/v1/access-tokens/{token}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AccessTokenInfo {
    /// The hub (portal) id.
    pub hub_id: i64,
    /// The hub's domain.
    #[serde(default)]
    pub hub_domain: Option<String>,
    /// The user who installed the app.
    #[serde(default)]
    pub user: Option<String>,
    /// The user id.
    #[serde(default)]
    pub user_id: Option<i64>,
    /// The app id.
    #[serde(default)]
    pub app_id: Option<i64>,
    /// Granted scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Seconds until the token expires.
    #[serde(default)]
    pub expires_in: Option<i64>,
}

/// Account details (`GET /account-info/v3/details`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct AccountDetails {
    /// The portal (hub) id.
    pub portal_id: i64,
    /// Account type (`STANDARD`, `DEVELOPER_TEST`, …).
    #[serde(default)]
    pub account_type: Option<String>,
    /// Time zone.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Company currency.
    #[serde(default)]
    pub company_currency: Option<String>,
    /// UI domain.
    #[serde(default)]
    pub ui_domain: Option<String>,
    /// Data hosting location (`na1`, `eu1`).
    #[serde(default)]
    pub data_hosting_location: Option<String>,
}
