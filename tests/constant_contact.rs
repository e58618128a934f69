//! Tests of the constant_contact source against its testkit fake.
