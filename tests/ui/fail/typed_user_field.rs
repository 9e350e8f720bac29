// The user's own input type lacks a field the machine's templates read (`input.custmer`).
#[derive(serde::Serialize)]
pub struct Ticket {
    pub customer: String,
}

flatmachine_runtime::flatmachine!("ui/machines/typed_user_field.yml", input = Ticket);

fn main() {}
