//! Tests of the mailchimp source against its testkit fake.
